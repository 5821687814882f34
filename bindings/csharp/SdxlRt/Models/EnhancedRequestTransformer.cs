// The seed's EnhancedRequestTransformer: EnhancedSDXLRequest -> the inference_request JSON, key for key and in the
// seed's order (message_type, request_id, data{worker_type, prompt, ...}); absent values are written as null, as
// the seed's serializer does. The seed left MapSchedulerType, ExtractLoRAName, TransformControlNetConfig and
// TransformUpscaleConfig undefined; their definitions here are documented on each method.
using System;
using System.Collections.Generic;
using System.Runtime.Serialization;

namespace SdxlRt
{
    /// <summary>Builds the engine's request JSON from an <see cref="EnhancedSDXLRequest"/>, exactly as the seed did.</summary>
    public class EnhancedRequestTransformer
    {
        /// <summary>The model file extensions <see cref="ExtractLoRAName"/> strips.</summary>
        private static readonly string[] ModelExtensions = { ".safetensors", ".ckpt", ".pt", ".pth", ".bin" };

        /// <summary>
        /// The seed's <c>TransformEnhancedSDXLRequest</c>: the message object (a data contract; serialize it with
        /// <see cref="ToJson"/>).
        /// </summary>
        public object TransformEnhancedSDXLRequest(EnhancedSDXLRequest request, string requestId)
        {
            return Transform(request, requestId);
        }

        /// <summary>The request as the JSON text the engine reads.</summary>
        public string ToJson(EnhancedSDXLRequest request, string requestId)
        {
            return Json.Serialize(Transform(request, requestId));
        }

        internal InferenceRequestMessage Transform(EnhancedSDXLRequest request, string requestId)
        {
            if (request == null)
            {
                throw new ArgumentNullException("request");
            }
            ConditioningConfiguration cond = request.Conditioning ?? new ConditioningConfiguration();
            SDXLModelConfiguration model = request.Model ?? new SDXLModelConfiguration();
            SchedulerConfiguration sched = request.Scheduler ?? new SchedulerConfiguration();
            HyperparameterConfiguration hyper = request.Hyperparameters ?? new HyperparameterConfiguration();
            OutputConfiguration output = request.Output ?? new OutputConfiguration();

            var loras = new List<LoraModelContract>();
            if (cond.LoRAs != null)
            {
                foreach (LoRAConfiguration lora in cond.LoRAs)
                {
                    loras.Add(new LoraModelContract { Name = ExtractLoRAName(lora.ModelPath), Weight = lora.Weight });
                }
            }

            return new InferenceRequestMessage
            {
                MessageType = "inference_request",
                RequestId = requestId,
                Data = new RequestDataContract
                {
                    WorkerType = DetermineWorkerType(request),
                    Prompt = cond.Prompt,
                    NegativePrompt = cond.NegativePrompt,
                    Prompt2 = cond.Prompt2,
                    NegativePrompt2 = cond.NegativePrompt2,
                    PromptSyntax = cond.PromptSyntax,
                    Hires = TransformHiresConfig(request.Hires),
                    InitImage = cond.InitImage,
                    MaskImage = cond.MaskImage,
                    PaddingMaskCrop = cond.PaddingMaskCrop,
                    MaskBlur = cond.MaskBlur,
                    ModelName = model.Base,
                    Hyperparameters = new HyperparametersContract
                    {
                        NumInferenceSteps = sched.Steps,
                        GuidanceScale = sched.GuidanceScale,
                        Seed = hyper.Seed,
                        Strength = hyper.Strength ?? 0.8,
                        RefinerSwitchAt = model.RefinerSwitchAt,
                        RefinerAestheticScore = model.RefinerAestheticScore,
                        RefinerNegativeAestheticScore = model.RefinerNegativeAestheticScore,
                        GuidanceRescale = sched.GuidanceRescale,
                        ClipSkip = cond.ClipSkip,
                    },
                    Dimensions = new DimensionsContract
                    {
                        Width = hyper.Width,
                        Height = hyper.Height,
                        OriginalSize = SizeContract.From(hyper.OriginalSize),
                        TargetSize = SizeContract.From(hyper.TargetSize),
                        CropsCoordsTopLeft = hyper.CropsCoordsTopLeft == null ? null
                            : new CropContract { Top = hyper.CropsCoordsTopLeft.Top, Left = hyper.CropsCoordsTopLeft.Left },
                    },
                    Scheduler = MapSchedulerType(sched.Type),
                    Models = new ModelsContract { Base = model.Base, Refiner = model.Refiner, Vae = model.Vae },
                    Lora = new LoraContract { Enabled = loras.Count > 0, Models = loras },
                    Controlnet = TransformControlNetConfig(cond.ControlNets, cond.ControlNetGuessMode),
                    Output = new OutputContract
                    {
                        Format = output.Format != null ? output.Format.ToLowerInvariant() : "png",
                        Quality = output.Quality ?? 95,
                        SavePath = output.SavePath,
                        Upscale = TransformUpscaleConfig(request.PostProcessing),
                        Overwrite = output.Overwrite,
                        ReturnImageData = output.ReturnImageData,
                        EmbedParameters = output.EmbedParameters,
                        Preview = output.Preview == null ? null : new PreviewContract
                        {
                            Enabled = output.Preview.Enabled,
                            Method = output.Preview.Method,
                            Interval = output.Preview.Interval,
                            Source = output.Preview.Source,
                        },
                    },
                    Batch = new BatchContract { Size = hyper.BatchSize ?? 1, Parallel = false },
                    Metadata = new MetadataContract
                    {
                        RequestId = requestId,
                        Priority = "normal",
                        Timeout = request.TimeoutSeconds,
                        Tags = new[] { "enhanced_sdxl", "c_sharp_service" },
                    },
                },
            };
        }

        /// <summary>
        /// The seed's routing: <c>enhanced_sdxl_worker</c> when LoRAs, ControlNets or a refiner are requested, else
        /// <c>sdxl_worker</c> (sdxlrt serves both alike). An init image (image-to-image) does not change it, as
        /// upscaling does not: the seed's routing is kept as it was.
        /// </summary>
        public string DetermineWorkerType(EnhancedSDXLRequest request)
        {
            ConditioningConfiguration cond = request.Conditioning;
            bool loras = cond != null && cond.LoRAs != null && cond.LoRAs.Count > 0;
            bool controlNets = cond != null && cond.ControlNets != null && cond.ControlNets.Count > 0;
            bool refiner = request.Model != null && !string.IsNullOrEmpty(request.Model.Refiner);
            return loras || controlNets || refiner ? "enhanced_sdxl_worker" : "sdxl_worker";
        }

        /// <summary>
        /// The scheduler name as given (sdxlrt resolves diffusers class names and UI names such as
        /// <c>DPM++ 2M Karras</c> itself); null or blank gives null, the model's own scheduler.
        /// </summary>
        public string MapSchedulerType(string type)
        {
            return string.IsNullOrWhiteSpace(type) ? null : type.Trim();
        }

        /// <summary>
        /// A LoRA's name from its path: the file name after the last <c>/</c> or <c>\</c>, without a model extension
        /// (.safetensors, .ckpt, .pt, .pth, .bin). <c>C:\loras\detail.safetensors</c> gives <c>detail</c>.
        /// </summary>
        public string ExtractLoRAName(string modelPath)
        {
            if (modelPath == null)
            {
                return null;
            }
            string name = modelPath.Substring(Math.Max(modelPath.LastIndexOf('/'), modelPath.LastIndexOf('\\')) + 1);
            foreach (string ext in ModelExtensions)
            {
                if (name.Length > ext.Length && name.EndsWith(ext, StringComparison.OrdinalIgnoreCase))
                {
                    return name.Substring(0, name.Length - ext.Length);
                }
            }
            return name;
        }

        /// <summary>
        /// <c>{"enabled": any units, "models": [{"type", "model_path", "control_image", "conditioning_scale"}]}</c>,
        /// plus <c>guidance_start</c> / <c>guidance_end</c> and <c>preprocessor</c> (<c>{"type", "low_threshold",
        /// "high_threshold"}</c>, thresholds when set) when set, and <c>"guess_mode": true</c> when
        /// <paramref name="guessMode"/> is set and there are units; no units gives
        /// <c>{"enabled": false, "models": []}</c>.
        /// </summary>
        internal ControlNetContract TransformControlNetConfig(List<ControlNetConfiguration> controlNets, bool guessMode = false)
        {
            var units = new List<ControlNetUnitContract>();
            if (controlNets != null)
            {
                foreach (ControlNetConfiguration cn in controlNets)
                {
                    units.Add(new ControlNetUnitContract
                    {
                        Type = cn.Type,
                        ModelPath = cn.ModelPath,
                        ControlImage = cn.ControlImage,
                        ConditioningScale = cn.ConditioningScale,
                        GuidanceStart = cn.GuidanceStart,
                        GuidanceEnd = cn.GuidanceEnd,
                        Preprocessor = cn.Preprocessor == null ? null : new PreprocessorContract
                        {
                            Type = cn.Preprocessor.Type,
                            LowThreshold = cn.Preprocessor.LowThreshold,
                            HighThreshold = cn.Preprocessor.HighThreshold,
                        },
                    });
                }
            }
            return new ControlNetContract { Enabled = units.Count > 0, Models = units, GuessMode = guessMode && units.Count > 0 };
        }

        /// <summary><c>data.hires</c>, or null (not sent) for none.</summary>
        internal HiresContract TransformHiresConfig(HiresConfiguration hires)
        {
            if (hires == null)
            {
                return null;
            }
            return new HiresContract
            {
                Enabled = hires.Enabled,
                Scale = hires.Scale,
                Width = hires.Width,
                Height = hires.Height,
                Upscaler = hires.Upscaler,
                Strength = hires.Strength,
                Steps = hires.Steps,
                ControlNet = hires.ControlNet,
            };
        }

        /// <summary><c>{"enabled", "factor", "model"}</c>; no upscaling gives <c>{"enabled": false, "factor": 2, "model": null}</c>.</summary>
        internal UpscaleContract TransformUpscaleConfig(PostProcessingConfiguration post)
        {
            UpscaleConfiguration up = post != null ? post.Upscale : null;
            if (up == null)
            {
                return new UpscaleContract { Enabled = false, Factor = 2, Model = null };
            }
            return new UpscaleContract { Enabled = up.Enabled, Factor = up.Factor, Model = up.Model };
        }
    }

    // The wire shapes. DataMember Order fixes the seed's key order; EmitDefaultValue (true unless noted) writes
    // absent values as null like the seed's serializer.

    [DataContract]
    internal sealed class InferenceRequestMessage
    {
        [DataMember(Name = "message_type", Order = 0)] public string MessageType;
        [DataMember(Name = "request_id", Order = 1)] public string RequestId;
        [DataMember(Name = "data", Order = 2)] public RequestDataContract Data;
    }

    [DataContract]
    internal sealed class RequestDataContract
    {
        [DataMember(Name = "worker_type", Order = 0)] public string WorkerType;
        [DataMember(Name = "prompt", Order = 1)] public string Prompt;
        [DataMember(Name = "negative_prompt", Order = 2)] public string NegativePrompt;
        [DataMember(Name = "model_name", Order = 3)] public string ModelName;
        [DataMember(Name = "hyperparameters", Order = 4)] public HyperparametersContract Hyperparameters;
        [DataMember(Name = "dimensions", Order = 5)] public DimensionsContract Dimensions;
        [DataMember(Name = "scheduler", Order = 6)] public string Scheduler;
        [DataMember(Name = "models", Order = 7)] public ModelsContract Models;
        [DataMember(Name = "lora", Order = 8)] public LoraContract Lora;
        [DataMember(Name = "controlnet", Order = 9)] public ControlNetContract Controlnet;
        [DataMember(Name = "output", Order = 10)] public OutputContract Output;
        [DataMember(Name = "batch", Order = 11)] public BatchContract Batch;
        [DataMember(Name = "metadata", Order = 12)] public MetadataContract Metadata;
        [DataMember(Name = "prompt_2", Order = 13, EmitDefaultValue = false)] public string Prompt2;
        [DataMember(Name = "negative_prompt_2", Order = 14, EmitDefaultValue = false)] public string NegativePrompt2;
        [DataMember(Name = "init_image", Order = 15, EmitDefaultValue = false)] public string InitImage;
        [DataMember(Name = "mask_image", Order = 16, EmitDefaultValue = false)] public string MaskImage;
        [DataMember(Name = "padding_mask_crop", Order = 17, EmitDefaultValue = false)] public int? PaddingMaskCrop;
        [DataMember(Name = "mask_blur", Order = 18, EmitDefaultValue = false)] public double? MaskBlur;
        [DataMember(Name = "prompt_syntax", Order = 19, EmitDefaultValue = false)] public string PromptSyntax;
        [DataMember(Name = "hires", Order = 20, EmitDefaultValue = false)] public HiresContract Hires;
    }

    [DataContract]
    internal sealed class HiresContract
    {
        [DataMember(Name = "enabled", Order = 0)] public bool Enabled;
        [DataMember(Name = "scale", Order = 1, EmitDefaultValue = false)] public double? Scale;
        [DataMember(Name = "width", Order = 2, EmitDefaultValue = false)] public int? Width;
        [DataMember(Name = "height", Order = 3, EmitDefaultValue = false)] public int? Height;
        [DataMember(Name = "upscaler", Order = 4, EmitDefaultValue = false)] public string Upscaler;
        [DataMember(Name = "strength", Order = 5, EmitDefaultValue = false)] public double? Strength;
        [DataMember(Name = "steps", Order = 6, EmitDefaultValue = false)] public int? Steps;
        [DataMember(Name = "controlnet", Order = 7, EmitDefaultValue = false)] public string ControlNet;
    }

    [DataContract]
    internal sealed class HyperparametersContract
    {
        [DataMember(Name = "num_inference_steps", Order = 0)] public int? NumInferenceSteps;
        [DataMember(Name = "guidance_scale", Order = 1)] public double? GuidanceScale;
        [DataMember(Name = "seed", Order = 2)] public long? Seed;
        [DataMember(Name = "strength", Order = 3)] public double Strength;
        // Not in the seed: written only when the caller set it.
        [DataMember(Name = "refiner_switch_at", Order = 4, EmitDefaultValue = false)] public double? RefinerSwitchAt;
        [DataMember(Name = "refiner_aesthetic_score", Order = 5, EmitDefaultValue = false)] public double? RefinerAestheticScore;
        [DataMember(Name = "refiner_negative_aesthetic_score", Order = 6, EmitDefaultValue = false)] public double? RefinerNegativeAestheticScore;
        [DataMember(Name = "guidance_rescale", Order = 7, EmitDefaultValue = false)] public double? GuidanceRescale;
        [DataMember(Name = "clip_skip", Order = 8, EmitDefaultValue = false)] public int? ClipSkip;
    }

    [DataContract]
    internal sealed class DimensionsContract
    {
        [DataMember(Name = "width", Order = 0)] public int? Width;
        [DataMember(Name = "height", Order = 1)] public int? Height;
        [DataMember(Name = "original_size", Order = 2, EmitDefaultValue = false)] public SizeContract OriginalSize;
        [DataMember(Name = "target_size", Order = 3, EmitDefaultValue = false)] public SizeContract TargetSize;
        [DataMember(Name = "crops_coords_top_left", Order = 4, EmitDefaultValue = false)] public CropContract CropsCoordsTopLeft;
    }

    [DataContract]
    internal sealed class SizeContract
    {
        [DataMember(Name = "width", Order = 0)] public int Width;
        [DataMember(Name = "height", Order = 1)] public int Height;

        internal static SizeContract From(ImageSize size)
        {
            return size == null ? null : new SizeContract { Width = size.Width, Height = size.Height };
        }
    }

    [DataContract]
    internal sealed class CropContract
    {
        [DataMember(Name = "top", Order = 0)] public int Top;
        [DataMember(Name = "left", Order = 1)] public int Left;
    }

    [DataContract]
    internal sealed class ModelsContract
    {
        [DataMember(Name = "base", Order = 0)] public string Base;
        [DataMember(Name = "refiner", Order = 1)] public string Refiner;
        [DataMember(Name = "vae", Order = 2)] public string Vae;
    }

    [DataContract]
    internal sealed class LoraContract
    {
        [DataMember(Name = "enabled", Order = 0)] public bool Enabled;
        [DataMember(Name = "models", Order = 1)] public List<LoraModelContract> Models;
    }

    [DataContract]
    internal sealed class LoraModelContract
    {
        [DataMember(Name = "name", Order = 0)] public string Name;
        [DataMember(Name = "weight", Order = 1)] public double Weight;
    }

    [DataContract]
    internal sealed class ControlNetContract
    {
        [DataMember(Name = "enabled", Order = 0)] public bool Enabled;
        [DataMember(Name = "models", Order = 1)] public List<ControlNetUnitContract> Models;
        [DataMember(Name = "guess_mode", Order = 2, EmitDefaultValue = false)] public bool GuessMode;
    }

    [DataContract]
    internal sealed class ControlNetUnitContract
    {
        [DataMember(Name = "type", Order = 0)] public string Type;
        [DataMember(Name = "model_path", Order = 1)] public string ModelPath;
        [DataMember(Name = "control_image", Order = 2)] public string ControlImage;
        [DataMember(Name = "conditioning_scale", Order = 3)] public double ConditioningScale;
        [DataMember(Name = "guidance_start", Order = 4, EmitDefaultValue = false)] public double? GuidanceStart;
        [DataMember(Name = "guidance_end", Order = 5, EmitDefaultValue = false)] public double? GuidanceEnd;
        [DataMember(Name = "preprocessor", Order = 6, EmitDefaultValue = false)] public PreprocessorContract Preprocessor;
    }

    [DataContract]
    internal sealed class PreprocessorContract
    {
        [DataMember(Name = "type", Order = 0)] public string Type;
        [DataMember(Name = "low_threshold", Order = 1, EmitDefaultValue = false)] public double? LowThreshold;
        [DataMember(Name = "high_threshold", Order = 2, EmitDefaultValue = false)] public double? HighThreshold;
    }

    [DataContract]
    internal sealed class OutputContract
    {
        [DataMember(Name = "format", Order = 0)] public string Format;
        [DataMember(Name = "quality", Order = 1)] public int Quality;
        [DataMember(Name = "save_path", Order = 2)] public string SavePath;
        [DataMember(Name = "upscale", Order = 3)] public UpscaleContract Upscale;
        // Not in the seed: written only when the caller set them.
        [DataMember(Name = "overwrite", Order = 4, EmitDefaultValue = false)] public bool? Overwrite;
        [DataMember(Name = "return_image_data", Order = 5, EmitDefaultValue = false)] public bool? ReturnImageData;
        [DataMember(Name = "embed_parameters", Order = 6, EmitDefaultValue = false)] public bool? EmbedParameters;
        [DataMember(Name = "preview", Order = 7, EmitDefaultValue = false)] public PreviewContract Preview;
    }

    [DataContract]
    internal sealed class PreviewContract
    {
        [DataMember(Name = "enabled", Order = 0)] public bool Enabled;
        [DataMember(Name = "method", Order = 1, EmitDefaultValue = false)] public string Method;
        [DataMember(Name = "interval", Order = 2, EmitDefaultValue = false)] public int? Interval;
        [DataMember(Name = "source", Order = 3, EmitDefaultValue = false)] public string Source;
    }

    [DataContract]
    internal sealed class UpscaleContract
    {
        [DataMember(Name = "enabled", Order = 0)] public bool Enabled;
        [DataMember(Name = "factor", Order = 1)] public int Factor;
        [DataMember(Name = "model", Order = 2)] public string Model;
    }

    [DataContract]
    internal sealed class BatchContract
    {
        [DataMember(Name = "size", Order = 0)] public int Size;
        [DataMember(Name = "parallel", Order = 1)] public bool Parallel;
    }

    [DataContract]
    internal sealed class MetadataContract
    {
        [DataMember(Name = "request_id", Order = 0)] public string RequestId;
        [DataMember(Name = "priority", Order = 1)] public string Priority;
        [DataMember(Name = "timeout", Order = 2)] public int Timeout;
        [DataMember(Name = "tags", Order = 3)] public string[] Tags;
    }
}
