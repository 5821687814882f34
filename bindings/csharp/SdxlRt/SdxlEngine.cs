// The public engine: create once, generate from many threads, dispose once. Each generation runs the blocking
// native call on its own thread; progress comes back through one static, never-collected callback whose
// user_data is a GCHandle to the call's state; an exception thrown by the caller's IProgress never unwinds into
// native code (it is caught, the run is cancelled, and the exception is rethrown after the native call returns).
using System;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using System.Runtime.Serialization;
using System.Threading;
using System.Threading.Tasks;

namespace SdxlRt
{
    /// <summary>Options for <see cref="SdxlEngine"/>; null members are left to the engine's defaults.</summary>
    [DataContract]
    public class SdxlEngineOptions
    {
        /// <summary>Folder whose sub-folders are models in the ONNX layout (request model names resolve inside it).</summary>
        [DataMember(Name = "models_root", EmitDefaultValue = false)]
        public string ModelsRoot { get; set; }

        /// <summary>The model used when a request names none.</summary>
        [DataMember(Name = "default_model", EmitDefaultValue = false)]
        public string DefaultModel { get; set; }

        /// <summary>
        /// Absolute path of libonnxruntime.so*. Null: when the ORT_DYLIB_PATH environment variable is not set
        /// either, the binding passes the first libonnxruntime.so* it finds beside libsdxlrt.so, in the native
        /// folders the .NET host resolved from NuGet packages (Microsoft.ML.OnnxRuntime), or beside this assembly;
        /// the library then falls back to the system loader.
        /// </summary>
        [DataMember(Name = "onnxruntime_path", EmitDefaultValue = false)]
        public string OnnxRuntimePath { get; set; }

        /// <summary>Threads per operator (null: ONNX Runtime's choice).</summary>
        [DataMember(Name = "intra_op_threads", EmitDefaultValue = false)]
        public int? IntraOpThreads { get; set; }

        /// <summary>Largest request JSON in bytes (null: 1 MiB).</summary>
        [DataMember(Name = "max_request_bytes", EmitDefaultValue = false)]
        public long? MaxRequestBytes { get; set; }

        /// <summary>Largest width (null: 4096).</summary>
        [DataMember(Name = "max_width", EmitDefaultValue = false)]
        public int? MaxWidth { get; set; }

        /// <summary>Largest height (null: 4096).</summary>
        [DataMember(Name = "max_height", EmitDefaultValue = false)]
        public int? MaxHeight { get; set; }

        /// <summary>Largest width × height (null: 4096²).</summary>
        [DataMember(Name = "max_pixels", EmitDefaultValue = false)]
        public long? MaxPixels { get; set; }

        /// <summary>Largest step count (null: 500).</summary>
        [DataMember(Name = "max_steps", EmitDefaultValue = false)]
        public int? MaxSteps { get; set; }

        /// <summary>Largest batch (null: 16).</summary>
        [DataMember(Name = "max_batch", EmitDefaultValue = false)]
        public int? MaxBatch { get; set; }
    }

    /// <summary>
    /// An sdxlrt engine: loaded models and an ONNX Runtime environment. Thread-safe: any number of generations may
    /// run at once. Dispose it once you are done; calls still running finish first.
    /// </summary>
    public sealed class SdxlEngine : IDisposable
    {
        // Rooted for the life of the process, so native code never calls a collected delegate.
        private static readonly NativeMethods.sdxl_progress_cb ProgressThunk = OnProgress;

        private readonly SdxlHandle handle;
        private readonly EnhancedRequestTransformer transformer = new EnhancedRequestTransformer();
        private int disposed;

        /// <summary>Creates an engine (see <see cref="SdxlEngineOptions"/>); throws <see cref="SdxlException"/>.</summary>
        public SdxlEngine(SdxlEngineOptions options = null)
        {
            options = options ?? new SdxlEngineOptions();
            OnnxRuntimePath = options.OnnxRuntimePath;
            if (OnnxRuntimePath == null && string.IsNullOrEmpty(Environment.GetEnvironmentVariable("ORT_DYLIB_PATH")))
            {
                OnnxRuntimePath = NativeLocator.FindOnnxRuntime();
            }
            SdxlEngineOptions effective = CopyOf(options);
            effective.OnnxRuntimePath = OnnxRuntimePath;
            SdxlHandle h;
            SdxlStatus status = NativeMethods.sdxl_engine_create(Interop.Utf8z(Json.Serialize(effective)), out h);
            string message = status == SdxlStatus.Ok ? null : Interop.LastError();
            if (status != SdxlStatus.Ok)
            {
                h.Dispose();
                Interop.Check(status, message);
            }
            h.MarkCreated();
            handle = h;
        }

        /// <summary>The libonnxruntime path handed to the engine, or null when the library looked it up itself.</summary>
        public string OnnxRuntimePath { get; private set; }

        /// <summary>The native library's version, e.g. 0.1.0.</summary>
        public static string NativeVersion
        {
            get { return Interop.FromUtf8(NativeMethods.sdxl_version()); }
        }

        /// <summary>Engines created and not yet released in this process (for leak checks).</summary>
        public static int LiveEngines
        {
            get { return SdxlHandle.Live; }
        }

        /// <summary>
        /// Generates images for a request in the seed's object model. Completes with the reply (images as paths or
        /// base64, per <see cref="OutputConfiguration"/>); faults with <see cref="SdxlException"/> when the engine
        /// refuses or fails the request; ends cancelled when <paramref name="cancellationToken"/> fires (the run
        /// stops within one step) or the request is cancelled by id or by its timeout.
        /// </summary>
        /// <param name="request">The request.</param>
        /// <param name="progress">Receives progress reports in order, synchronously on the generating thread.</param>
        /// <param name="cancellationToken">Cancels the run.</param>
        public Task<EnhancedSDXLResponse> GenerateEnhancedAsync(
            EnhancedSDXLRequest request,
            IProgress<GenerationProgress> progress = null,
            CancellationToken cancellationToken = default(CancellationToken))
        {
            return StartRequest(request, progress, cancellationToken, false);
        }

        /// <summary>
        /// Like <see cref="GenerateEnhancedAsync"/>, and also returns every image's raw RGB8 pixels
        /// (<see cref="GeneratedImage.Pixels"/>) straight from native memory, with no PNG/base64 round trip.
        /// </summary>
        public Task<EnhancedSDXLResponse> GenerateImagesAsync(
            EnhancedSDXLRequest request,
            IProgress<GenerationProgress> progress = null,
            CancellationToken cancellationToken = default(CancellationToken))
        {
            return StartRequest(request, progress, cancellationToken, true);
        }

        /// <summary>
        /// Sends request JSON as-is (the envelope or a bare data object) and returns the reply JSON. Failures throw
        /// like <see cref="GenerateEnhancedAsync"/>; <see cref="SdxlException.ResponseJson"/> holds the failure reply.
        /// The token cancels at the next progress report; pass the request's id as <paramref name="requestId"/> so
        /// that cancelling also interrupts a running ONNX Runtime call (sdxl_cancel).
        /// </summary>
        public Task<string> GenerateJsonAsync(
            string requestJson,
            string requestId = null,
            IProgress<GenerationProgress> progress = null,
            CancellationToken cancellationToken = default(CancellationToken))
        {
            if (requestJson == null)
            {
                throw new ArgumentNullException("requestJson");
            }
            return Start(() => Run(requestJson, requestId, progress, cancellationToken, false).ResponseJson, cancellationToken);
        }

        /// <summary>Cancels the running (or soon starting) request with <paramref name="requestId"/>.</summary>
        public void Cancel(string requestId)
        {
            if (requestId == null)
            {
                throw new ArgumentNullException("requestId");
            }
            ThrowIfDisposed();
            SdxlStatus status = NativeMethods.sdxl_cancel(handle, Interop.Utf8z(requestId));
            Interop.Check(status, status == SdxlStatus.Ok ? null : Interop.LastError());
        }

        /// <summary>Releases the engine. Safe to call more than once; running calls finish first.</summary>
        public void Dispose()
        {
            if (Interlocked.Exchange(ref disposed, 1) == 0)
            {
                handle.Dispose();
            }
        }

        private Task<EnhancedSDXLResponse> StartRequest(
            EnhancedSDXLRequest request, IProgress<GenerationProgress> progress, CancellationToken ct, bool pixels)
        {
            if (request == null)
            {
                throw new ArgumentNullException("request");
            }
            ThrowIfDisposed();
            string requestId = request.RequestId ?? Guid.NewGuid().ToString();
            string json = transformer.ToJson(request, requestId);
            return Start(
                () =>
                {
                    NativeResult result = Run(json, requestId, progress, ct, pixels);
                    EnhancedSDXLResponse response = EnhancedSDXLResponse.FromJson(result.ResponseJson);
                    if (result.Images != null)
                    {
                        for (int i = 0; i < result.Images.Length && i < response.GeneratedImages.Count; i++)
                        {
                            response.GeneratedImages[i].Pixels = result.Images[i];
                        }
                    }
                    return response;
                },
                ct);
        }

        /// <summary>Runs <paramref name="work"/> on its own thread; the task ends cancelled on OperationCanceledException.</summary>
        private static Task<T> Start<T>(Func<T> work, CancellationToken ct)
        {
            var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
            if (ct.IsCancellationRequested)
            {
                tcs.SetCanceled();
                return tcs.Task;
            }
            Task.Factory.StartNew(
                () =>
                {
                    try
                    {
                        tcs.TrySetResult(work());
                    }
                    catch (OperationCanceledException)
                    {
                        tcs.TrySetCanceled();
                    }
                    catch (Exception e)
                    {
                        tcs.TrySetException(e);
                    }
                },
                CancellationToken.None,
                TaskCreationOptions.LongRunning,
                TaskScheduler.Default);
            return tcs.Task;
        }

        private sealed class NativeResult
        {
            public string ResponseJson;
            public RawImage[] Images;
        }

        /// <summary>The state one native call's progress callbacks see (through a GCHandle).</summary>
        private sealed class CallState
        {
            public IProgress<GenerationProgress> Progress;
            public CancellationToken Token;
            public Exception CallbackError;
        }

        /// <summary>The blocking native call, on the calling thread.</summary>
        private NativeResult Run(string json, string requestId, IProgress<GenerationProgress> progress, CancellationToken ct, bool pixels)
        {
            ThrowIfDisposed();
            var state = new CallState { Progress = progress, Token = ct };
            GCHandle stateHandle = GCHandle.Alloc(state);
            CancellationTokenRegistration registration = default(CancellationTokenRegistration);
            if (requestId != null && ct.CanBeCanceled)
            {
                registration = ct.Register(() => CancelQuietly(requestId));
            }
            IntPtr responsePtr = IntPtr.Zero;
            IntPtr batchPtr = IntPtr.Zero;
            SdxlStatus status;
            string lastError;
            try
            {
                byte[] request = Interop.Utf8z(json);
                if (pixels)
                {
                    status = NativeMethods.sdxl_generate_images(
                        handle, request, ProgressThunk, GCHandle.ToIntPtr(stateHandle), out responsePtr, out batchPtr);
                }
                else
                {
                    status = NativeMethods.sdxl_generate(
                        handle, request, ProgressThunk, GCHandle.ToIntPtr(stateHandle), out responsePtr);
                }
                lastError = status == SdxlStatus.Ok ? null : Interop.LastError();
            }
            finally
            {
                registration.Dispose();
                stateHandle.Free();
            }
            var result = new NativeResult();
            try
            {
                result.ResponseJson = Interop.TakeString(responsePtr);
                if (batchPtr != IntPtr.Zero)
                {
                    result.Images = CopyImages(batchPtr);
                }
            }
            finally
            {
                NativeMethods.sdxl_image_batch_free(batchPtr);
            }
            if (state.CallbackError != null)
            {
                ExceptionDispatchInfo.Capture(state.CallbackError).Throw();
            }
            if (status == SdxlStatus.Cancelled)
            {
                throw new OperationCanceledException("sdxlrt: " + (lastError ?? "cancelled"), ct);
            }
            if (status != SdxlStatus.Ok)
            {
                string message = lastError;
                if (string.IsNullOrEmpty(message) && result.ResponseJson != null)
                {
                    message = EnhancedSDXLResponse.FromJson(result.ResponseJson).Error;
                }
                Interop.Check(status, message, result.ResponseJson);
            }
            return result;
        }

        private void CancelQuietly(string requestId)
        {
            // Runs on whichever thread cancels the token; must never throw into it (or into native code, when the
            // token is cancelled from inside a progress callback).
            try
            {
                NativeMethods.sdxl_cancel(handle, Interop.Utf8z(requestId));
            }
            catch (Exception)
            {
                // The engine was disposed meanwhile: the progress callback still stops the run.
            }
        }

        private static RawImage[] CopyImages(IntPtr batchPtr)
        {
            var batch = (SdxlImageBatch)Marshal.PtrToStructure(batchPtr, typeof(SdxlImageBatch));
            int count = checked((int)batch.count.ToUInt64());
            var images = new RawImage[count];
            int size = Marshal.SizeOf(typeof(SdxlImage));
            for (int i = 0; i < count; i++)
            {
                var img = (SdxlImage)Marshal.PtrToStructure(new IntPtr(batch.images.ToInt64() + (long)i * size), typeof(SdxlImage));
                var data = new byte[checked((int)((long)img.stride * img.height))];
                Marshal.Copy(img.data, data, 0, data.Length);
                images[i] = new RawImage
                {
                    Width = (int)img.width,
                    Height = (int)img.height,
                    Stride = (int)img.stride,
                    Channels = (int)img.channels,
                    Seed = img.seed,
                    Data = data,
                };
            }
            return images;
        }

        /// <summary>The native progress callback. Never throws: everything is caught and cancels the run.</summary>
        private static int OnProgress(IntPtr userData, IntPtr progressPtr)
        {
            CallState state = null;
            try
            {
                state = (CallState)GCHandle.FromIntPtr(userData).Target;
                if (state.CallbackError != null || state.Token.IsCancellationRequested)
                {
                    return 1;
                }
                if (state.Progress != null)
                {
                    var p = (SdxlProgress)Marshal.PtrToStructure(progressPtr, typeof(SdxlProgress));
                    byte[] preview = null;
                    if (p.preview_rgb != IntPtr.Zero)
                    {
                        preview = new byte[checked((int)p.preview_len.ToUInt64())];
                        Marshal.Copy(p.preview_rgb, preview, 0, preview.Length);
                    }
                    state.Progress.Report(new GenerationProgress
                    {
                        Stage = p.stage,
                        Step = (int)p.step,
                        TotalSteps = (int)p.total_steps,
                        ImageIndex = (int)p.image_index,
                        BatchSize = (int)p.batch_size,
                        ElapsedSeconds = p.elapsed_seconds,
                        RequestId = Interop.FromUtf8(p.request_id),
                        Preview = preview,
                        PreviewWidth = preview == null ? 0 : (int)p.preview_width,
                        PreviewHeight = preview == null ? 0 : (int)p.preview_height,
                    });
                }
                return state.Token.IsCancellationRequested ? 1 : 0;
            }
            catch (Exception e)
            {
                if (state != null && state.CallbackError == null)
                {
                    state.CallbackError = e;
                }
                return 1;
            }
        }

        private static SdxlEngineOptions CopyOf(SdxlEngineOptions o)
        {
            return new SdxlEngineOptions
            {
                ModelsRoot = o.ModelsRoot,
                DefaultModel = o.DefaultModel,
                OnnxRuntimePath = o.OnnxRuntimePath,
                IntraOpThreads = o.IntraOpThreads,
                MaxRequestBytes = o.MaxRequestBytes,
                MaxWidth = o.MaxWidth,
                MaxHeight = o.MaxHeight,
                MaxPixels = o.MaxPixels,
                MaxSteps = o.MaxSteps,
                MaxBatch = o.MaxBatch,
            };
        }

        private void ThrowIfDisposed()
        {
            if (Volatile.Read(ref disposed) != 0)
            {
                throw new ObjectDisposedException("SdxlEngine");
            }
        }
    }
}
