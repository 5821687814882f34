// The seed's request object model (EnhancedSDXLRequest and its parts), as .NET callers already write it.
// EnhancedRequestTransformer turns it into the JSON the engine reads.
using System.Collections.Generic;

namespace SdxlRt
{
    /// <summary>One image-generation request, in the seed service's shape.</summary>
    public class EnhancedSDXLRequest
    {
        /// <summary>Prompts, LoRAs and ControlNets.</summary>
        public ConditioningConfiguration Conditioning { get; set; } = new ConditioningConfiguration();

        /// <summary>Which models to use.</summary>
        public SDXLModelConfiguration Model { get; set; } = new SDXLModelConfiguration();

        /// <summary>Scheduler, steps and guidance.</summary>
        public SchedulerConfiguration Scheduler { get; set; } = new SchedulerConfiguration();

        /// <summary>Seed, strength, size and batch.</summary>
        public HyperparameterConfiguration Hyperparameters { get; set; } = new HyperparameterConfiguration();

        /// <summary>Output format and where to save.</summary>
        public OutputConfiguration Output { get; set; } = new OutputConfiguration();

        /// <summary>Post-processing (upscaling); null for none.</summary>
        public PostProcessingConfiguration PostProcessing { get; set; }

        /// <summary>
        /// Hires fix (<c>data.hires</c>, A1111's "Hires. fix"): after the image is drawn at its size, it is upscaled
        /// and redrawn by image-to-image at the larger size, in the same request. Null (or not enabled) for one pass.
        /// Not in the seed's JSON: sent only when set.
        /// </summary>
        public HiresConfiguration Hires { get; set; }

        /// <summary>
        /// The request id (used for cancellation and echoed in the reply). Not part of the seed's object: the seed
        /// passes it to the transformer. Null: <see cref="SdxlEngine"/> makes a new GUID.
        /// </summary>
        public string RequestId { get; set; }

        /// <summary>
        /// The request's time limit in seconds (the seed always sends 300; sdxlrt cancels a run that takes longer).
        /// </summary>
        public int TimeoutSeconds { get; set; } = 300;
    }

    /// <summary>What to draw.</summary>
    public class ConditioningConfiguration
    {
        /// <summary>The prompt (required).</summary>
        public string Prompt { get; set; }

        /// <summary>The negative prompt; null for none.</summary>
        public string NegativePrompt { get; set; }

        /// <summary>The second (OpenCLIP bigG) text encoder's prompt, as diffusers' <c>prompt_2</c>; null or empty:
        /// <see cref="Prompt"/>.</summary>
        public string Prompt2 { get; set; }

        /// <summary>The second text encoder's negative prompt (<c>negative_prompt_2</c>); null or empty:
        /// <see cref="NegativePrompt"/>.</summary>
        public string NegativePrompt2 { get; set; }

        /// <summary>How the four prompt texts are read (<c>prompt_syntax</c>): null or <c>"plain"</c> is diffusers'
        /// reading (the literal text, cut to 77 tokens); <c>"weighted"</c> reads A1111's emphasis syntax
        /// (<c>(word:1.3)</c>, <c>(word)</c>, <c>[word]</c>, <c>BREAK</c>) and encodes prompts of any length in
        /// 75-token chunks. Any other value is an error naming <c>data.prompt_syntax</c>.</summary>
        public string PromptSyntax { get; set; }

        /// <summary>Text-encoder layers skipped beyond SDXL's penultimate one (<c>hyperparameters.clip_skip</c>,
        /// diffusers' <c>clip_skip</c>), for the prompt and the negative prompt; null or 0 for SDXL's default. A1111's
        /// "Clip skip 2" is that default. Plain prompt syntax only.</summary>
        public int? ClipSkip { get; set; }

        /// <summary>LoRA adapters, merged into the model's weights when its sessions are built (kohya, PEFT, LoCon,
        /// LoHa, LoKr, LyCORIS files; see the README's <c>lora</c> field).</summary>
        public List<LoRAConfiguration> LoRAs { get; set; } = new List<LoRAConfiguration>();

        /// <summary>
        /// ControlNet units conditioning the base model (diffusers' StableDiffusionXLControlNetPipeline; several are
        /// summed); see the README's <c>controlnet</c> field.
        /// </summary>
        public List<ControlNetConfiguration> ControlNets { get; set; } = new List<ControlNetConfiguration>();

        /// <summary>
        /// Run the ControlNets in diffusers' guess mode (<c>data.controlnet.guess_mode</c>, for all the units): with
        /// guidance they see only the conditional half of the batch, and each unit's residuals are weighted from 0.1
        /// (first skip connection) to 1 (middle block) on a log scale. A first ControlNet whose config says
        /// <c>global_pool_conditions</c> turns it on by itself (not when inpainting, as in diffusers). Default false.
        /// </summary>
        public bool ControlNetGuessMode { get; set; }

        /// <summary>
        /// Image-to-image (diffusers' StableDiffusionXLImg2ImgPipeline): the image to start from, as a file path, a
        /// <c>data:image/...;base64,</c> URL or base64 image data (raise <see cref="SdxlEngineOptions.MaxRequestBytes"/>
        /// for large inline images); null for text-to-image. It is resized (Lanczos) to
        /// <see cref="HyperparameterConfiguration.Width"/> × <see cref="HyperparameterConfiguration.Height"/> when
        /// they differ from its size; without them the image's own size is used, rounded down to the multiple the
        /// model needs (8 for SDXL). <see cref="HyperparameterConfiguration.Strength"/> says how much of the schedule
        /// runs. Sent as <c>data.init_image</c> only when set.
        /// </summary>
        public string InitImage { get; set; }

        /// <summary>
        /// Inpainting, with <see cref="InitImage"/>: a mask in the same forms; only its white part is redrawn (black
        /// keeps the image), as diffusers' StableDiffusionXLInpaintPipeline does with a standard 4-channel UNet or a
        /// 9-channel inpainting UNet. Null for none. Sent as <c>data.mask_image</c> only when set.
        /// </summary>
        public string MaskImage { get; set; }

        /// <summary>
        /// With <see cref="MaskImage"/>: inpaint only the mask's area, grown by this many pixels (diffusers'
        /// <c>padding_mask_crop</c>, A1111's "inpaint area: only masked"). The area is generated at
        /// <see cref="HyperparameterConfiguration.Width"/> × <see cref="HyperparameterConfiguration.Height"/> and put
        /// back into the init image through the mask, so the image keeps the init image's size and its pixels where the
        /// mask is black; the mask must have the init image's size. Null: the whole image. Sent as
        /// <c>data.padding_mask_crop</c> only when set.
        /// </summary>
        public int? PaddingMaskCrop { get; set; }

        /// <summary>
        /// With <see cref="MaskImage"/>: blur the mask first by this radius in pixels (≥ 0, fractions allowed; at most
        /// 1024), exactly as diffusers' <c>mask_processor.blur(mask, blur_factor)</c> (Pillow's <c>GaussianBlur</c>)
        /// does before its pipeline runs, A1111's "mask blur" (4 there): soft edges for the blend back into the init
        /// image with <see cref="PaddingMaskCrop"/>. Null or 0: no blur. Sent as <c>data.mask_blur</c> only when set.
        /// </summary>
        public double? MaskBlur { get; set; }
    }

    /// <summary>One LoRA adapter.</summary>
    public class LoRAConfiguration
    {
        /// <summary>The adapter's path or name; the request carries its file name without the model extension.</summary>
        public string ModelPath { get; set; }

        /// <summary>The adapter's weight.</summary>
        public double Weight { get; set; } = 1.0;
    }

    /// <summary>One ControlNet unit.</summary>
    public class ControlNetConfiguration
    {
        /// <summary>The ControlNet type, e.g. <c>canny</c>.</summary>
        public string Type { get; set; }

        /// <summary>
        /// The ControlNet: a folder holding <c>model.onnx</c> (or a <c>.onnx</c> file) under the engine's
        /// <c>models_root/controlnet</c>, or a path inside <c>models_root</c>.
        /// </summary>
        public string ModelPath { get; set; }

        /// <summary>
        /// The control image, already preprocessed (an edge map for canny), or with <see cref="Preprocessor"/> the photo
        /// it is made from: a file path, a <c>data:image/...;base64,</c> URL or base64 data. It is resized to the output
        /// size.
        /// </summary>
        public string ControlImage { get; set; }

        /// <summary>
        /// What makes the control image from <see cref="ControlImage"/> first; null to use it as it is. The one built in
        /// is <see cref="ControlNetPreprocessor.Canny"/>: OpenCV's <c>cv2.Canny</c> edge map of the photo.
        /// </summary>
        public ControlNetPreprocessor Preprocessor { get; set; }

        /// <summary>The conditioning scale (0-10).</summary>
        public double ConditioningScale { get; set; } = 1.0;

        /// <summary>The fraction of the steps before which the unit does not apply; null for 0.</summary>
        public double? GuidanceStart { get; set; }

        /// <summary>The fraction of the steps after which the unit does not apply; null for 1.</summary>
        public double? GuidanceEnd { get; set; }
    }

    /// <summary>A ControlNet unit's preprocessor (<c>data.controlnet.models[i].preprocessor</c>).</summary>
    public class ControlNetPreprocessor
    {
        /// <summary>Its name: <c>canny</c> (or <c>none</c>).</summary>
        public string Type { get; set; }

        /// <summary>Canny's low threshold, a gradient magnitude from 0 to 10000; null for 100.</summary>
        public double? LowThreshold { get; set; }

        /// <summary>Canny's high threshold, at least <see cref="LowThreshold"/>; null for 200.</summary>
        public double? HighThreshold { get; set; }

        /// <summary>
        /// OpenCV's Canny edge detector (<c>cv2.Canny(image, low, high)</c>) with the given thresholds, or 100 and 200
        /// as diffusers' docs use.
        /// </summary>
        public static ControlNetPreprocessor Canny(double? lowThreshold = null, double? highThreshold = null)
        {
            return new ControlNetPreprocessor { Type = "canny", LowThreshold = lowThreshold, HighThreshold = highThreshold };
        }
    }

    /// <summary>The model suite.</summary>
    public class SDXLModelConfiguration
    {
        /// <summary>The base model: a folder name under the engine's <c>models_root</c>; null for the default model.</summary>
        public string Base { get; set; }

        /// <summary>
        /// An SDXL refiner folder under <c>models_root</c>; null for none. The base model denoises the first
        /// <see cref="RefinerSwitchAt"/> of the schedule and the refiner the rest (diffusers' ensemble of experts).
        /// </summary>
        public string Refiner { get; set; }

        /// <summary>
        /// The fraction of the schedule (between 0 and 1) after which the refiner takes over; null for the default
        /// 0.8. Sent only when set.
        /// </summary>
        public double? RefinerSwitchAt { get; set; }

        /// <summary>The refiner's aesthetic score (0-10); null for the default 6.0. Sent only when set.</summary>
        public double? RefinerAestheticScore { get; set; }

        /// <summary>The refiner's negative aesthetic score (0-10); null for the default 2.5. Sent only when set.</summary>
        public double? RefinerNegativeAestheticScore { get; set; }

        /// <summary>A custom VAE: a folder under <c>models_root/vae/</c>; null for the model's own.</summary>
        public string Vae { get; set; }
    }

    /// <summary>The sampler.</summary>
    public class SchedulerConfiguration
    {
        /// <summary>
        /// A diffusers scheduler class name (<c>EulerDiscreteScheduler</c>) or a UI name (<c>DPM++ 2M Karras</c>);
        /// null for the model's own scheduler.
        /// </summary>
        public string Type { get; set; }

        /// <summary>Denoising steps; null for the default (50).</summary>
        public int? Steps { get; set; }

        /// <summary>Classifier-free guidance scale; null for the default (5.0).</summary>
        public double? GuidanceScale { get; set; }

        /// <summary>
        /// diffusers' <c>guidance_rescale</c> ("CFG rescale"), 0 to 1; null or 0 for none. Pulls the guided noise
        /// prediction back toward the conditional prediction's spread, for zero-terminal-SNR and v-prediction models
        /// that overexpose at high guidance (0.7 is the paper's value). Only with guidance (scale above 1).
        /// </summary>
        public double? GuidanceRescale { get; set; }
    }

    /// <summary>Seed, strength, size and batch.</summary>
    public class HyperparameterConfiguration
    {
        /// <summary>The seed (image i of a batch uses Seed + i); null for a random seed (reported in the reply).</summary>
        public long? Seed { get; set; }

        /// <summary>
        /// Image-to-image strength, 0 to 1: with <see cref="ConditioningConfiguration.InitImage"/>, how much of the
        /// schedule runs: <c>int(steps × strength)</c> steps, from the init image noised to that point (1 runs the
        /// whole schedule on the fully noised image). A strength that leaves no step to run is an error; without
        /// an init image it is ignored. Null sends the seed's default 0.8.
        /// </summary>
        public double? Strength { get; set; }

        /// <summary>Width in pixels (a multiple of 8); null for the model's default.</summary>
        public int? Width { get; set; }

        /// <summary>Height in pixels (a multiple of 8); null for the model's default.</summary>
        public int? Height { get; set; }

        /// <summary>
        /// SDXL size micro-conditioning (diffusers' <c>original_size</c>): the size of the picture the model should
        /// imagine the image was made from, e.g. smaller than the image for the look of an upscaled small picture;
        /// null: the image's size. Sent as <c>data.dimensions.original_size</c> only when set.
        /// </summary>
        public ImageSize OriginalSize { get; set; }

        /// <summary>SDXL size micro-conditioning (diffusers' <c>target_size</c>); null: the image's size.</summary>
        public ImageSize TargetSize { get; set; }

        /// <summary>SDXL size micro-conditioning (diffusers' <c>crops_coords_top_left</c>): the top-left corner of
        /// the crop out of <see cref="OriginalSize"/>; null: (0, 0), an uncropped picture.</summary>
        public CropCorner CropsCoordsTopLeft { get; set; }

        /// <summary>Images to generate; null sends 1.</summary>
        public int? BatchSize { get; set; }
    }

    /// <summary>How to return the images.</summary>
    public class OutputConfiguration
    {
        /// <summary><c>png</c> (null), <c>jpeg</c>, <c>jpg</c> or <c>webp</c>, any case.</summary>
        public string Format { get; set; }

        /// <summary>JPEG quality 1..100; null sends 95.</summary>
        public int? Quality { get; set; }

        /// <summary>Where to write the image (batch images get an index suffix); null to only return it as data.</summary>
        public string SavePath { get; set; }

        /// <summary>Whether to return base64 image data; null for the engine's default (only when there is no SavePath).
        /// Not in the seed's JSON: sent only when set.</summary>
        public bool? ReturnImageData { get; set; }

        /// <summary>Whether an existing file at SavePath may be replaced; null for no. Sent only when set.</summary>
        public bool? Overwrite { get; set; }

        /// <summary>Whether the generation parameters (prompt, seed, sampler, ...) are written into the image file, as
        /// A1111 does (PNG text chunk <c>parameters</c>, JPEG/WebP EXIF UserComment): null for the engine's default (yes),
        /// false to leave them out (the prompt is then not in the file). Sent only when set
        /// (<c>data.output.embed_parameters</c>).</summary>
        public bool? EmbedParameters { get; set; }

        /// <summary>Live previews in the progress reports (<c>data.output.preview</c>): each denoising report where one
        /// is due carries <see cref="GenerationProgress.Preview"/>. Null for none (sent only when set).</summary>
        public PreviewConfiguration Preview { get; set; }
    }

    /// <summary>Live preview settings (<c>data.output.preview</c>).</summary>
    public class PreviewConfiguration
    {
        /// <summary>Whether denoising reports carry previews.</summary>
        public bool Enabled { get; set; } = true;

        /// <summary><c>latent2rgb</c> (null: the default; a fast linear projection of the latents, 1/8 of the image's
        /// width and height) or <c>vae</c> (a full VAE decode per preview, the image's size; costly).</summary>
        public string Method { get; set; }

        /// <summary>A preview every this many denoising steps, 1 to 10000 (null: 1); the last step always has
        /// one.</summary>
        public int? Interval { get; set; }

        /// <summary><c>denoised</c> (null: the default; the step's estimate of the final image) or <c>noisy</c>
        /// (the latents after the step).</summary>
        public string Source { get; set; }
    }

    /// <summary>Post-processing steps.</summary>
    public class PostProcessingConfiguration
    {
        /// <summary>Upscaling after generation (<c>data.output.upscale</c>); null for none.</summary>
        public UpscaleConfiguration Upscale { get; set; }
    }

    /// <summary>Hires fix settings (<c>data.hires</c>); null properties send nothing and take the engine's default.</summary>
    public class HiresConfiguration
    {
        /// <summary>Whether to run the second pass.</summary>
        public bool Enabled { get; set; } = true;

        /// <summary>The second pass's size as a factor of the first pass's (A1111's <c>hr_scale</c>, 1 to 8; each
        /// side truncated, then rounded down to a multiple of 8); null with no Width/Height gives 2.</summary>
        public double? Scale { get; set; }

        /// <summary>The second pass's width in pixels (a multiple of 8; A1111's "resize width to"), instead of
        /// <see cref="Scale"/>; alone, the height keeps the aspect ratio.</summary>
        public int? Width { get; set; }

        /// <summary>The second pass's height in pixels (a multiple of 8), instead of <see cref="Scale"/>.</summary>
        public int? Height { get; set; }

        /// <summary><c>latent</c> (null: the default, A1111's "Latent"), <c>latent-nearest</c>,
        /// <c>latent-nearest-exact</c>, <c>lanczos</c>, or an ONNX upscaler model under the engine's
        /// <c>models_root/upscalers/</c> by name (as <see cref="UpscaleConfiguration.Model"/>).</summary>
        public string Upscaler { get; set; }

        /// <summary>The second pass's denoising strength, 0 to 1; null gives 0.7 (A1111's).</summary>
        public double? Strength { get; set; }

        /// <summary>The second pass's steps (A1111's "hires steps"); null or 0: the first pass's.</summary>
        public int? Steps { get; set; }

        /// <summary>With ControlNet units (<see cref="ConditioningConfiguration"/>): the passes they condition,
        /// <c>both</c> (null: the default), <c>first</c> (the text-to-image pass only) or <c>second</c> (the hires
        /// pass only, each control image resized to the target size); sd-webui-controlnet's "Both", "Low res only"
        /// and "High res only" work too.</summary>
        public string ControlNet { get; set; }
    }

    /// <summary>Upscaling settings.</summary>
    public class UpscaleConfiguration
    {
        /// <summary>Whether to upscale.</summary>
        public bool Enabled { get; set; }

        /// <summary>The images come back exactly this many times wider and taller, 1 to 8.</summary>
        public int Factor { get; set; } = 2;

        /// <summary>
        /// The upscaler: an ONNX super-resolution model (ESRGAN / Real-ESRGAN / SwinIR) in the engine's
        /// <c>models_root/upscalers/</c>, by name (<c>"4x-UltraSharp"</c> for <c>upscalers/4x-UltraSharp.onnx</c>).
        /// There is no built-in one: null is an error unless <see cref="Factor"/> is 1.
        /// </summary>
        public string Model { get; set; }
    }

    /// <summary>A size in pixels, for the micro-conditioning.</summary>
    public class ImageSize
    {
        /// <summary>Width in pixels, 1 to 16384.</summary>
        public int Width { get; set; }

        /// <summary>Height in pixels, 1 to 16384.</summary>
        public int Height { get; set; }
    }

    /// <summary>The top-left corner of a crop, in pixels (0 to 16384 each).</summary>
    public class CropCorner
    {
        /// <summary>Rows cut off above.</summary>
        public int Top { get; set; }

        /// <summary>Columns cut off on the left.</summary>
        public int Left { get; set; }
    }
}
