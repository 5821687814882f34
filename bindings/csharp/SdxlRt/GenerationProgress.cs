// One progress report, copied out of the native sdxl_progress struct.
namespace SdxlRt
{
    /// <summary>
    /// What a generation is doing. Reports arrive in order, synchronously, on the thread running the native call;
    /// an <see cref="System.IProgress{T}"/> that posts elsewhere (System.Progress&lt;T&gt;) may reorder them.
    /// </summary>
    public sealed class GenerationProgress
    {
        /// <summary>
        /// The stage: loading, text encoding, image encoding (only with an init image, image-to-image: one report
        /// before denoising), denoising, decoding, then upscaling (only when the request upscales; its steps count
        /// the upscaler's tiles of one image) and saving. Reports come in that order; the enum's numeric values do
        /// not follow it (<see cref="SdxlStage.ImageEncoding"/> is 6).
        /// </summary>
        public SdxlStage Stage { get; internal set; }

        /// <summary>Steps completed in this stage (denoising: 1..TotalSteps).</summary>
        public int Step { get; internal set; }

        /// <summary>
        /// Steps in this stage (denoising: the requested steps; image-to-image: the <c>int(steps × strength)</c> that
        /// run).
        /// </summary>
        public int TotalSteps { get; internal set; }

        /// <summary>Which image of the batch (0-based).</summary>
        public int ImageIndex { get; internal set; }

        /// <summary>Images in the request.</summary>
        public int BatchSize { get; internal set; }

        /// <summary>Seconds since the request started.</summary>
        public double ElapsedSeconds { get; internal set; }

        /// <summary>The request's id.</summary>
        public string RequestId { get; internal set; }

        /// <summary>
        /// A live preview of image <see cref="ImageIndex"/> after this denoising step, when the request asks for
        /// previews (<see cref="OutputConfiguration.Preview"/>) and one is due; null otherwise. RGB, 3 bytes per pixel,
        /// rows top to bottom, <see cref="PreviewWidth"/> × 3 bytes per row; copied from the native report, so it is
        /// yours to keep.
        /// </summary>
        public byte[] Preview { get; internal set; }

        /// <summary>The preview's width in pixels (0 without one).</summary>
        public int PreviewWidth { get; internal set; }

        /// <summary>The preview's height in pixels (0 without one).</summary>
        public int PreviewHeight { get; internal set; }

        /// <inheritdoc />
        public override string ToString()
        {
            return string.Format(
                System.Globalization.CultureInfo.InvariantCulture,
                "{0} {1}/{2} (image {3}/{4}, {5:0.000}s)",
                Stage, Step, TotalSteps, ImageIndex + 1, BatchSize, ElapsedSeconds);
        }
    }
}
