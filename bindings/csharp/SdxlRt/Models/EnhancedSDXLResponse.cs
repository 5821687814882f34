// The reply: the seed's EnhancedSDXLResponse (Success, GeneratedImages, ProcessingMetrics, Warnings, Error) read
// from the engine's JSON, plus raw pixels when the request went through the raw-pixels path.
using System.Collections.Generic;
using System.Runtime.Serialization;

namespace SdxlRt
{
    /// <summary>The result of one request.</summary>
    public class EnhancedSDXLResponse
    {
        /// <summary>The request's id.</summary>
        public string RequestId { get; set; }

        /// <summary>Whether images were produced.</summary>
        public bool Success { get; set; }

        /// <summary>One entry per image, in batch order (empty on failure).</summary>
        public List<GeneratedImage> GeneratedImages { get; set; } = new List<GeneratedImage>();

        /// <summary>Timings and device facts; null on failure.</summary>
        public ProcessingMetrics ProcessingMetrics { get; set; }

        /// <summary>Non-fatal notes (unknown fields, settings without effect).</summary>
        public List<string> Warnings { get; set; } = new List<string>();

        /// <summary>The error message on failure, else null.</summary>
        public string Error { get; set; }

        /// <summary>The stable error kind on failure (<c>invalid_request</c>, <c>cancelled</c>, ...), else null.</summary>
        public string ErrorCode { get; set; }

        /// <summary>The JSON this response was read from.</summary>
        public string RawJson { get; set; }

        /// <summary>Reads the engine's reply JSON.</summary>
        public static EnhancedSDXLResponse FromJson(string json)
        {
            ResponseContract w = Json.Deserialize<ResponseContract>(json);
            var r = new EnhancedSDXLResponse
            {
                RequestId = w.RequestId,
                Success = w.Success,
                Error = w.Error,
                ErrorCode = w.ErrorCode,
                RawJson = json,
            };
            if (w.Warnings != null)
            {
                r.Warnings.AddRange(w.Warnings);
            }
            if (w.Data != null)
            {
                if (w.Data.GeneratedImages != null)
                {
                    foreach (GeneratedImageContract g in w.Data.GeneratedImages)
                    {
                        r.GeneratedImages.Add(GeneratedImage.From(g));
                    }
                }
                if (w.Data.ProcessingMetrics != null)
                {
                    r.ProcessingMetrics = ProcessingMetrics.From(w.Data.ProcessingMetrics);
                }
            }
            return r;
        }
    }

    /// <summary>One generated image.</summary>
    public class GeneratedImage
    {
        /// <summary>Where the image was written, or null when it was not saved.</summary>
        public string ImagePath { get; set; }

        /// <summary>Base64 of the encoded file, or null when not requested.</summary>
        public string ImageData { get; set; }

        /// <summary>Encoding: png, jpeg or webp.</summary>
        public string Format { get; set; }

        /// <summary>Width in pixels.</summary>
        public int Width { get; set; }

        /// <summary>Height in pixels.</summary>
        public int Height { get; set; }

        /// <summary>How the image was made.</summary>
        public ImageMetadata Metadata { get; set; }

        /// <summary>The raw RGB8 pixels (raw-pixels path only: <see cref="SdxlEngine.GenerateImagesAsync"/>); else null.</summary>
        public RawImage Pixels { get; set; }

        internal static GeneratedImage From(GeneratedImageContract g)
        {
            var img = new GeneratedImage
            {
                ImagePath = g.ImagePath,
                ImageData = g.ImageData,
                Format = g.Format,
                Width = g.Width,
                Height = g.Height,
            };
            if (g.Metadata != null)
            {
                ModelInfoContract mi = g.Metadata.ModelInfo ?? new ModelInfoContract();
                img.Metadata = new ImageMetadata
                {
                    Seed = g.Metadata.Seed,
                    Steps = g.Metadata.Steps,
                    GuidanceScale = g.Metadata.GuidanceScale,
                    GuidanceRescale = g.Metadata.GuidanceRescale,
                    ClipSkip = g.Metadata.ClipSkip,
                    Scheduler = g.Metadata.Scheduler,
                    ModelInfo = new ModelInfo { BaseModel = mi.BaseModel, RefinerModel = mi.RefinerModel, VaeModel = mi.VaeModel },
                    Upscale = UpscaleInfo.From(g.Metadata.Upscale),
                    ControlNets = ControlNetInfo.From(g.Metadata.ControlNets),
                    InitImage = InitImageInfo.From(g.Metadata.InitImage),
                    Prompt = PromptInfo.From(g.Metadata.Prompt),
                    Hires = HiresInfo.From(g.Metadata.Hires),
                };
            }
            return img;
        }
    }

    /// <summary>Enough to reproduce an image.</summary>
    public class ImageMetadata
    {
        /// <summary>The seed this image used.</summary>
        public ulong Seed { get; set; }

        /// <summary>
        /// Denoising steps requested (image-to-image runs <see cref="InitImageInfo.DenoisingSteps"/> of them).
        /// </summary>
        public int Steps { get; set; }

        /// <summary>Guidance scale.</summary>
        public double GuidanceScale { get; set; }

        /// <summary>The guidance rescale applied (<see cref="SchedulerConfiguration.GuidanceRescale"/>); null when none was.</summary>
        public double? GuidanceRescale { get; set; }

        /// <summary>The clip skip applied (<see cref="ConditioningConfiguration.ClipSkip"/>); null for SDXL's default.</summary>
        public int? ClipSkip { get; set; }

        /// <summary>The diffusers class name of the scheduler that ran.</summary>
        public string Scheduler { get; set; }

        /// <summary>The models used.</summary>
        public ModelInfo ModelInfo { get; set; }

        /// <summary>How the image was upscaled after generation; null when it was not.</summary>
        public UpscaleInfo Upscale { get; set; }

        /// <summary>The ControlNet units that conditioned the image, in request order; empty when none did.</summary>
        public List<ControlNetInfo> ControlNets { get; set; } = new List<ControlNetInfo>();

        /// <summary>How the init image was used (image-to-image); null for text-to-image.</summary>
        public InitImageInfo InitImage { get; set; }

        /// <summary>What hires fix's second pass did (<see cref="EnhancedSDXLRequest.Hires"/>); null for one pass.</summary>
        public HiresInfo Hires { get; set; }

        /// <summary>How the prompts were read with <see cref="ConditioningConfiguration.PromptSyntax"/>
        /// <c>"weighted"</c>; null in the default plain mode.</summary>
        public PromptInfo Prompt { get; set; }
    }

    /// <summary>A weighted prompt's size (<c>metadata.prompt</c>).</summary>
    public class PromptInfo
    {
        /// <summary><c>"weighted"</c>.</summary>
        public string Syntax { get; set; }

        /// <summary>The prompt's tokens (the more of the two tokenizers'), start/end/padding not counted.</summary>
        public int Tokens { get; set; }

        /// <summary>The negative prompt's tokens; null when there is none (or no guidance).</summary>
        public int? NegativeTokens { get; set; }

        /// <summary>The 77-token chunks each text encoder ran for the prompt and the negative prompt.</summary>
        public int Chunks { get; set; }

        internal static PromptInfo From(PromptInfoContract p)
        {
            if (p == null)
            {
                return null;
            }
            return new PromptInfo { Syntax = p.Syntax, Tokens = p.Tokens, NegativeTokens = p.NegativeTokens, Chunks = p.Chunks };
        }
    }

    /// <summary>How image-to-image used <see cref="ConditioningConfiguration.InitImage"/> (the image is not echoed).</summary>
    public class InitImageInfo
    {
        /// <summary>The strength it ran with.</summary>
        public double Strength { get; set; }

        /// <summary>The denoising steps that ran: <c>int(steps × strength)</c>.</summary>
        public int DenoisingSteps { get; set; }

        /// <summary>The init image's width as given (it was resized when it differs from the image's width).</summary>
        public int SourceWidth { get; set; }

        /// <summary>The init image's height as given.</summary>
        public int SourceHeight { get; set; }

        /// <summary>With <see cref="ConditioningConfiguration.PaddingMaskCrop"/>: the region of the init image that was
        /// inpainted, <c>[x1, y1, x2, y2]</c> (columns x1..x2, rows y1..y2); null otherwise.</summary>
        public int[] MaskCrop { get; set; }

        /// <summary>With <see cref="ConditioningConfiguration.MaskImage"/> (inpainting): how the mask was used; null
        /// otherwise.</summary>
        public MaskInfo Mask { get; set; }

        internal static InitImageInfo From(InitImageInfoContract i)
        {
            if (i == null)
            {
                return null;
            }
            return new InitImageInfo
            {
                Strength = i.Strength,
                DenoisingSteps = i.DenoisingSteps,
                SourceWidth = i.SourceWidth,
                SourceHeight = i.SourceHeight,
                MaskCrop = i.MaskCrop,
                Mask = i.Mask == null ? null : new MaskInfo { Blur = i.Mask.Blur, RedrawnFraction = i.Mask.RedrawnFraction },
            };
        }
    }

    /// <summary>What hires fix's second pass did (<c>metadata.hires</c>).</summary>
    public class HiresInfo
    {
        /// <summary>The second pass's width (the image's, before <see cref="UpscaleConfiguration"/>).</summary>
        public int Width { get; set; }

        /// <summary>The second pass's height.</summary>
        public int Height { get; set; }

        /// <summary>The first (text-to-image) pass's width.</summary>
        public int FirstPassWidth { get; set; }

        /// <summary>The first pass's height.</summary>
        public int FirstPassHeight { get; set; }

        /// <summary><c>latent</c>, <c>latent-nearest</c>, <c>latent-nearest-exact</c>, <c>lanczos</c> or the model's name.</summary>
        public string Upscaler { get; set; }

        /// <summary>The second pass's denoising strength.</summary>
        public double Strength { get; set; }

        /// <summary>The second pass's steps.</summary>
        public int Steps { get; set; }

        /// <summary>The steps it ran: <c>int(Steps × Strength)</c>.</summary>
        public int DenoisingSteps { get; set; }

        /// <summary>With an upscaler model: its runs per image; null otherwise.</summary>
        public int? ModelPasses { get; set; }

        /// <summary>With ControlNet units: the passes they conditioned, <c>both</c>, <c>first</c> or
        /// <c>second</c> (<see cref="HiresConfiguration.ControlNet"/>); null without units.</summary>
        public string ControlNet { get; set; }

        internal static HiresInfo From(HiresInfoContract h)
        {
            if (h == null)
            {
                return null;
            }
            return new HiresInfo
            {
                Width = h.Width,
                Height = h.Height,
                FirstPassWidth = h.FirstPassWidth,
                FirstPassHeight = h.FirstPassHeight,
                Upscaler = h.Upscaler,
                Strength = h.Strength,
                Steps = h.Steps,
                DenoisingSteps = h.DenoisingSteps,
                ModelPasses = h.ModelPasses,
                ControlNet = h.ControlNet,
            };
        }
    }

    /// <summary>How an inpainting request used its mask.</summary>
    public class MaskInfo
    {
        /// <summary>The blur radius applied to it (<see cref="ConditioningConfiguration.MaskBlur"/>; 0: none).</summary>
        public double Blur { get; set; }

        /// <summary>The share of the generated pixels the mask marked for redrawing (white after binarizing at 0.5),
        /// from 0 to 1; with <see cref="ConditioningConfiguration.PaddingMaskCrop"/>, of the cropped region's.</summary>
        public double RedrawnFraction { get; set; }
    }

    /// <summary>One ControlNet unit that conditioned an image.</summary>
    public class ControlNetInfo
    {
        /// <summary>The ControlNet as requested (<c>model_path</c>).</summary>
        public string Model { get; set; }

        /// <summary>The unit's type label as requested; null when not given.</summary>
        public string Type { get; set; }

        /// <summary>The conditioning scale.</summary>
        public double ConditioningScale { get; set; }

        /// <summary>The fraction of the steps where the unit started applying.</summary>
        public double GuidanceStart { get; set; }

        /// <summary>The fraction of the steps where it stopped.</summary>
        public double GuidanceEnd { get; set; }

        /// <summary>The preprocessor that made the control image (type <c>canny</c> and its thresholds); null when the
        /// control image was used as sent.</summary>
        public ControlNetPreprocessor Preprocessor { get; set; }

        /// <summary>True when the unit ran in diffusers' guess mode (<see cref="ConditioningConfiguration.ControlNetGuessMode"/>,
        /// or a first ControlNet with <c>global_pool_conditions</c>).</summary>
        public bool GuessMode { get; set; }

        /// <summary>True when the ControlNet's config says <c>global_pool_conditions</c> (its residuals were averaged
        /// over the image).</summary>
        public bool GlobalPoolConditions { get; set; }

        /// <summary>With hires fix: the passes the unit conditioned, in order (<c>first</c>, <c>second</c>); empty
        /// without hires fix.</summary>
        public List<string> Passes { get; set; } = new List<string>();

        internal static List<ControlNetInfo> From(List<ControlNetInfoContract> units)
        {
            var list = new List<ControlNetInfo>();
            if (units != null)
            {
                foreach (ControlNetInfoContract u in units)
                {
                    list.Add(new ControlNetInfo
                    {
                        Model = u.Model,
                        Type = u.Type,
                        ConditioningScale = u.ConditioningScale,
                        GuidanceStart = u.GuidanceStart,
                        GuidanceEnd = u.GuidanceEnd,
                        Preprocessor = u.Preprocessor == null ? null : new ControlNetPreprocessor
                        {
                            Type = u.Preprocessor.Type,
                            LowThreshold = u.Preprocessor.LowThreshold,
                            HighThreshold = u.Preprocessor.HighThreshold,
                        },
                        GuessMode = u.GuessMode,
                        GlobalPoolConditions = u.GlobalPoolConditions,
                        Passes = u.Passes == null ? new List<string>() : new List<string>(u.Passes),
                    });
                }
            }
            return list;
        }
    }

    /// <summary>What <c>data.output.upscale</c> did to an image.</summary>
    public class UpscaleInfo
    {
        /// <summary>The upscaler as requested.</summary>
        public string Model { get; set; }

        /// <summary>The requested factor: the image is this many times the generated width and height.</summary>
        public int Factor { get; set; }

        /// <summary>The model's native scale.</summary>
        public int ModelScale { get; set; }

        /// <summary>Runs of the model per image; a Lanczos resize followed when ModelScale^Passes is not Factor.</summary>
        public int Passes { get; set; }

        internal static UpscaleInfo From(UpscaleInfoContract u)
        {
            if (u == null)
            {
                return null;
            }
            return new UpscaleInfo { Model = u.Model, Factor = u.Factor, ModelScale = u.ModelScale, Passes = u.Passes };
        }
    }

    /// <summary>The models an image used.</summary>
    public class ModelInfo
    {
        /// <summary>The base model's name.</summary>
        public string BaseModel { get; set; }

        /// <summary>The refiner's name, or null.</summary>
        public string RefinerModel { get; set; }

        /// <summary>The custom VAE's name, or null (the model's own VAE).</summary>
        public string VaeModel { get; set; }
    }

    /// <summary>Timings (seconds) and device facts for a whole request; null where the engine could not measure.</summary>
    public class ProcessingMetrics
    {
        /// <summary>From receiving the request to the reply.</summary>
        public double? TotalTime { get; set; }

        /// <summary>Text encoding + VAE encode (image-to-image) + denoising + VAE decode.</summary>
        public double? InferenceTime { get; set; }

        /// <summary>Both text encoders.</summary>
        public double? TextEncodingTime { get; set; }

        /// <summary>The denoising loop.</summary>
        public double? DenoisingTime { get; set; }

        /// <summary>Denoising time per step.</summary>
        public double? DenoisingStepAvg { get; set; }

        /// <summary>The VAE decoder.</summary>
        public double? VaeDecodeTime { get; set; }

        /// <summary>The VAE encoder on the init image (image-to-image); 0 without one.</summary>
        public double? VaeEncodeTime { get; set; }

        /// <summary>Image encoding and writing.</summary>
        public double? EncodeSaveTime { get; set; }

        /// <summary>Upscaling (<c>data.output.upscale</c>), the whole batch; 0 without upscaling.</summary>
        public double? UpscaleTime { get; set; }

        /// <summary>Loading the model for this request (0 when it was already loaded).</summary>
        public double? ModelLoadTime { get; set; }

        /// <summary>Time inside ONNX Runtime graph calls; TotalTime minus this is sdxlrt's own share.</summary>
        public double? OnnxRuntimeTime { get; set; }

        /// <summary>UNet runs.</summary>
        public int UnetEvaluations { get; set; }

        /// <summary>
        /// Denoising steps per image that ran: the requested ones, or image-to-image's <c>int(steps × strength)</c>.
        /// </summary>
        public int Steps { get; set; }

        /// <summary>The execution provider and device, e.g. CPU.</summary>
        public string DeviceName { get; set; }

        /// <summary>Device memory in use after the run, in bytes; null where unknown.</summary>
        public ulong? DeviceMemoryUsed { get; set; }

        /// <summary>Peak device memory, in bytes; null where unknown.</summary>
        public ulong? PeakMemory { get; set; }

        internal static ProcessingMetrics From(ProcessingMetricsContract m)
        {
            return new ProcessingMetrics
            {
                TotalTime = m.TotalTime,
                InferenceTime = m.InferenceTime,
                TextEncodingTime = m.TextEncodingTime,
                DenoisingTime = m.DenoisingTime,
                DenoisingStepAvg = m.DenoisingStepAvg,
                VaeDecodeTime = m.VaeDecodeTime,
                VaeEncodeTime = m.VaeEncodeTime,
                EncodeSaveTime = m.EncodeSaveTime,
                UpscaleTime = m.UpscaleTime,
                ModelLoadTime = m.ModelLoadTime,
                OnnxRuntimeTime = m.OnnxRuntimeTime,
                UnetEvaluations = m.UnetEvaluations,
                Steps = m.Steps,
                DeviceName = m.DeviceName,
                DeviceMemoryUsed = m.DeviceMemoryUsed,
                PeakMemory = m.PeakMemory,
            };
        }
    }

    /// <summary>One image as raw pixels: RGB, 8 bits per channel, rows top to bottom, <see cref="Stride"/> bytes apart.</summary>
    public sealed class RawImage
    {
        /// <summary>Width in pixels.</summary>
        public int Width { get; internal set; }

        /// <summary>Height in pixels.</summary>
        public int Height { get; internal set; }

        /// <summary>Bytes from one row to the next.</summary>
        public int Stride { get; internal set; }

        /// <summary>Channels per pixel (3).</summary>
        public int Channels { get; internal set; }

        /// <summary>The seed that produced the image.</summary>
        public ulong Seed { get; internal set; }

        /// <summary>Stride × Height bytes.</summary>
        public byte[] Data { get; internal set; }
    }

    [DataContract]
    internal sealed class ResponseContract
    {
        [DataMember(Name = "request_id")] public string RequestId;
        [DataMember(Name = "success")] public bool Success;
        [DataMember(Name = "data")] public ResponseDataContract Data;
        [DataMember(Name = "warnings")] public List<string> Warnings;
        [DataMember(Name = "error")] public string Error;
        [DataMember(Name = "error_code")] public string ErrorCode;
    }

    [DataContract]
    internal sealed class ResponseDataContract
    {
        [DataMember(Name = "generated_images")] public List<GeneratedImageContract> GeneratedImages;
        [DataMember(Name = "processing_metrics")] public ProcessingMetricsContract ProcessingMetrics;
    }

    [DataContract]
    internal sealed class GeneratedImageContract
    {
        [DataMember(Name = "image_path")] public string ImagePath;
        [DataMember(Name = "image_data")] public string ImageData;
        [DataMember(Name = "format")] public string Format;
        [DataMember(Name = "width")] public int Width;
        [DataMember(Name = "height")] public int Height;
        [DataMember(Name = "metadata")] public ImageMetadataContract Metadata;
    }

    [DataContract]
    internal sealed class ImageMetadataContract
    {
        [DataMember(Name = "seed")] public ulong Seed;
        [DataMember(Name = "steps")] public int Steps;
        [DataMember(Name = "guidance_scale")] public double GuidanceScale;
        [DataMember(Name = "guidance_rescale")] public double? GuidanceRescale;
        [DataMember(Name = "clip_skip")] public int? ClipSkip;
        [DataMember(Name = "scheduler")] public string Scheduler;
        [DataMember(Name = "model_info")] public ModelInfoContract ModelInfo;
        [DataMember(Name = "upscale")] public UpscaleInfoContract Upscale;
        [DataMember(Name = "controlnets")] public List<ControlNetInfoContract> ControlNets;
        [DataMember(Name = "init_image")] public InitImageInfoContract InitImage;
        [DataMember(Name = "prompt")] public PromptInfoContract Prompt;
        [DataMember(Name = "hires")] public HiresInfoContract Hires;
    }

    [DataContract]
    internal sealed class HiresInfoContract
    {
        [DataMember(Name = "width")] public int Width;
        [DataMember(Name = "height")] public int Height;
        [DataMember(Name = "first_pass_width")] public int FirstPassWidth;
        [DataMember(Name = "first_pass_height")] public int FirstPassHeight;
        [DataMember(Name = "upscaler")] public string Upscaler;
        [DataMember(Name = "strength")] public double Strength;
        [DataMember(Name = "steps")] public int Steps;
        [DataMember(Name = "denoising_steps")] public int DenoisingSteps;
        [DataMember(Name = "model_passes")] public int? ModelPasses;
        [DataMember(Name = "controlnet")] public string ControlNet;
    }

    [DataContract]
    internal sealed class PromptInfoContract
    {
        [DataMember(Name = "syntax")] public string Syntax;
        [DataMember(Name = "tokens")] public int Tokens;
        [DataMember(Name = "negative_tokens")] public int? NegativeTokens;
        [DataMember(Name = "chunks")] public int Chunks;
    }

    [DataContract]
    internal sealed class InitImageInfoContract
    {
        [DataMember(Name = "strength")] public double Strength;
        [DataMember(Name = "denoising_steps")] public int DenoisingSteps;
        [DataMember(Name = "source_width")] public int SourceWidth;
        [DataMember(Name = "source_height")] public int SourceHeight;
        [DataMember(Name = "mask_crop")] public int[] MaskCrop;
        [DataMember(Name = "mask")] public MaskInfoContract Mask;
    }

    [DataContract]
    internal sealed class MaskInfoContract
    {
        [DataMember(Name = "blur")] public double Blur;
        [DataMember(Name = "redrawn_fraction")] public double RedrawnFraction;
    }

    [DataContract]
    internal sealed class ControlNetInfoContract
    {
        [DataMember(Name = "model")] public string Model;
        [DataMember(Name = "type")] public string Type;
        [DataMember(Name = "conditioning_scale")] public double ConditioningScale;
        [DataMember(Name = "guidance_start")] public double GuidanceStart;
        [DataMember(Name = "guidance_end")] public double GuidanceEnd;
        [DataMember(Name = "preprocessor")] public PreprocessorContract Preprocessor;
        [DataMember(Name = "guess_mode")] public bool GuessMode;
        [DataMember(Name = "global_pool_conditions")] public bool GlobalPoolConditions;
        [DataMember(Name = "passes")] public string[] Passes;
    }

    [DataContract]
    internal sealed class UpscaleInfoContract
    {
        [DataMember(Name = "model")] public string Model;
        [DataMember(Name = "factor")] public int Factor;
        [DataMember(Name = "model_scale")] public int ModelScale;
        [DataMember(Name = "passes")] public int Passes;
    }

    [DataContract]
    internal sealed class ModelInfoContract
    {
        [DataMember(Name = "base_model")] public string BaseModel;
        [DataMember(Name = "refiner_model")] public string RefinerModel;
        [DataMember(Name = "vae_model")] public string VaeModel;
    }

    [DataContract]
    internal sealed class ProcessingMetricsContract
    {
        [DataMember(Name = "total_time")] public double? TotalTime;
        [DataMember(Name = "inference_time")] public double? InferenceTime;
        [DataMember(Name = "text_encoding_time")] public double? TextEncodingTime;
        [DataMember(Name = "denoising_time")] public double? DenoisingTime;
        [DataMember(Name = "denoising_step_avg")] public double? DenoisingStepAvg;
        [DataMember(Name = "vae_decode_time")] public double? VaeDecodeTime;
        [DataMember(Name = "vae_encode_time")] public double? VaeEncodeTime;
        [DataMember(Name = "encode_save_time")] public double? EncodeSaveTime;
        [DataMember(Name = "upscale_time")] public double? UpscaleTime;
        [DataMember(Name = "model_load_time")] public double? ModelLoadTime;
        [DataMember(Name = "onnxruntime_time")] public double? OnnxRuntimeTime;
        [DataMember(Name = "unet_evaluations")] public int UnetEvaluations;
        [DataMember(Name = "steps")] public int Steps;
        [DataMember(Name = "device_name")] public string DeviceName;
        [DataMember(Name = "device_memory_used")] public ulong? DeviceMemoryUsed;
        [DataMember(Name = "peak_memory")] public ulong? PeakMemory;
    }
}
