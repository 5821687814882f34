// The one layer between the generated P/Invoke declarations (NativeMethods.g.cs) and the public API: UTF-8 in and
// out, freeing what the library allocated, turning statuses into exceptions (Check, the only place that does), and
// finding ONNX Runtime next to the native library.
using System;
using System.Collections.Generic;
using System.IO;
using System.Runtime.CompilerServices;
using System.Text;

namespace SdxlRt
{
    internal static class Interop
    {
        /// <summary>NUL-terminated UTF-8 bytes of <paramref name="text"/>, or null for null.</summary>
        internal static byte[] Utf8z(string text)
        {
            if (text == null)
            {
                return null;
            }
            int n = Encoding.UTF8.GetByteCount(text);
            byte[] bytes = new byte[n + 1];
            Encoding.UTF8.GetBytes(text, 0, text.Length, bytes, 0);
            return bytes;
        }

        /// <summary>Copies a NUL-terminated UTF-8 string the library owns; null for NULL.</summary>
        internal static unsafe string FromUtf8(IntPtr ptr)
        {
            if (ptr == IntPtr.Zero)
            {
                return null;
            }
            byte* p = (byte*)ptr;
            int len = 0;
            while (p[len] != 0)
            {
                len++;
            }
            return Encoding.UTF8.GetString(p, len);
        }

        /// <summary>Copies a string the library returned to us, then frees it with sdxl_string_free.</summary>
        internal static string TakeString(IntPtr ptr)
        {
            if (ptr == IntPtr.Zero)
            {
                return null;
            }
            try
            {
                return FromUtf8(ptr);
            }
            finally
            {
                NativeMethods.sdxl_string_free(ptr);
            }
        }

        /// <summary>This thread's last error text (read it right after the failing call, on the same thread).</summary>
        internal static string LastError()
        {
            return FromUtf8(NativeMethods.sdxl_last_error()) ?? string.Empty;
        }

        /// <summary>The snake_case name of a status (<c>invalid_request</c>).</summary>
        internal static string StatusName(SdxlStatus status)
        {
            return FromUtf8(NativeMethods.sdxl_status_str((uint)status)) ?? "unknown";
        }

        /// <summary>
        /// Throws the exception for a non-OK status, like ONNX Runtime's VerifySuccess: SDXL_STATUS_CANCELLED becomes
        /// <see cref="OperationCanceledException"/>, everything else an <see cref="SdxlException"/> (or subclass).
        /// </summary>
        internal static void Check(SdxlStatus status, string message, string responseJson = null)
        {
            if (status == SdxlStatus.Ok)
            {
                return;
            }
            throw ExceptionFor(status, message, responseJson);
        }

        internal static Exception ExceptionFor(SdxlStatus status, string message, string responseJson)
        {
            if (string.IsNullOrEmpty(message))
            {
                message = StatusName(status);
            }
            switch (status)
            {
                case SdxlStatus.Cancelled:
                    return new OperationCanceledException("sdxlrt: " + message);
                case SdxlStatus.InvalidJson:
                case SdxlStatus.InvalidRequest:
                case SdxlStatus.Unsupported:
                case SdxlStatus.InvalidOption:
                    return new SdxlValidationException(status, message, responseJson);
                case SdxlStatus.ModelNotFound:
                    return new SdxlModelNotFoundException(status, message, responseJson);
                case SdxlStatus.RuntimeUnavailable:
                    return new SdxlRuntimeUnavailableException(status, message, responseJson);
                default:
                    return new SdxlException(status, message, responseJson);
            }
        }
    }

    /// <summary>
    /// Finds the native files a process uses: where libsdxlrt.so was loaded from, and a libonnxruntime.so* to hand
    /// the engine as its <c>onnxruntime_path</c> when the caller gave none.
    /// </summary>
    internal static class NativeLocator
    {
        internal const string OrtFilePrefix = "libonnxruntime.so";

        /// <summary>The folder libsdxlrt.so was mapped from (Linux: /proc/self/maps), or null.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        internal static string LoadedLibraryDirectory()
        {
            // Make sure the library is loaded (NoInlining: mono's JIT must not resolve the import earlier than here).
            NativeMethods.sdxl_version();
            try
            {
                foreach (string line in File.ReadAllLines("/proc/self/maps"))
                {
                    int slash = line.IndexOf('/');
                    if (slash < 0)
                    {
                        continue;
                    }
                    string path = line.Substring(slash).Trim();
                    if (Path.GetFileName(path) == "libsdxlrt.so")
                    {
                        return Path.GetDirectoryName(path);
                    }
                }
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
            return null;
        }

        /// <summary>
        /// Folders to look in for ONNX Runtime, in order: beside libsdxlrt.so; the native search folders the .NET host
        /// resolved from deps.json (NuGet package folders such as Microsoft.ML.OnnxRuntime's
        /// runtimes/linux-x64/native); beside this assembly and its runtimes/linux-x64/native; the app base folder.
        /// </summary>
        internal static List<string> OrtSearchDirectories()
        {
            var dirs = new List<string>();
            string libDir = LoadedLibraryDirectory();
            if (libDir != null)
            {
                dirs.Add(libDir);
            }
            // AppDomain.GetData reads the host's properties on .NET Core and exists on every netstandard2.0 target.
            string hostDirs = AppDomain.CurrentDomain.GetData("NATIVE_DLL_SEARCH_DIRECTORIES") as string;
            if (!string.IsNullOrEmpty(hostDirs))
            {
                foreach (string d in hostDirs.Split(Path.PathSeparator))
                {
                    if (d.Length > 0)
                    {
                        dirs.Add(d);
                    }
                }
            }
            string asmDir = Path.GetDirectoryName(typeof(NativeLocator).Assembly.Location);
            if (!string.IsNullOrEmpty(asmDir))
            {
                dirs.Add(asmDir);
                dirs.Add(Path.Combine(asmDir, "runtimes", "linux-x64", "native"));
            }
            if (!string.IsNullOrEmpty(AppContext.BaseDirectory))
            {
                dirs.Add(AppContext.BaseDirectory);
            }
            return dirs;
        }

        /// <summary>The absolute path of the first libonnxruntime.so* found in <see cref="OrtSearchDirectories"/>.</summary>
        internal static string FindOnnxRuntime()
        {
            foreach (string dir in OrtSearchDirectories())
            {
                string found = OrtIn(dir);
                if (found != null)
                {
                    return found;
                }
            }
            return null;
        }

        /// <summary>libonnxruntime.so in <paramref name="dir"/>, else its longest versioned name (libonnxruntime.so.1.31.1).</summary>
        internal static string OrtIn(string dir)
        {
            try
            {
                if (!Directory.Exists(dir))
                {
                    return null;
                }
                string plain = Path.Combine(dir, OrtFilePrefix);
                if (File.Exists(plain))
                {
                    return Path.GetFullPath(plain);
                }
                string best = null;
                foreach (string f in Directory.GetFiles(dir, OrtFilePrefix + ".*"))
                {
                    if (best == null || f.Length > best.Length)
                    {
                        best = f;
                    }
                }
                return best == null ? null : Path.GetFullPath(best);
            }
            catch (IOException)
            {
                return null;
            }
            catch (UnauthorizedAccessException)
            {
                return null;
            }
        }
    }
}
