/* A C host of sdxlrt: compiles against include/sdxlrt.h alone, links libsdxlrt.so, generates one image.
 * Usage: smoke <models_root>. Exit 0 on success; prints what failed otherwise. */
#include <stdio.h>
#include <string.h>
#include "sdxlrt.h"
#if defined(__x86_64__)
#include <xmmintrin.h>
/* The host thread's flush-to-zero and denormals-are-zero bits: ONNX Runtime sets them on the thread that builds
 * the process's first session when asked to; sdxlrt must hand the thread back as it found it. */
static unsigned fp_mode(void) { return _mm_getcsr() & 0x8040u; }
#else
static unsigned fp_mode(void) { return 0; }
#endif

static int steps_seen = 0;

static int32_t on_progress(void *user_data, const sdxl_progress *p) {
    (void)user_data;
    if (p->stage == SDXL_STAGE_DENOISING) steps_seen = (int)p->step;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: smoke <models_root>\n"); return 2; }
    char options[4096];
    snprintf(options, sizeof options, "{\"models_root\": \"%s\"}", argv[1]);
    sdxl_engine *engine = NULL;
    sdxl_status s = sdxl_engine_create(options, &engine);
    if (s != SDXL_STATUS_OK) { fprintf(stderr, "create: %s: %s\n", sdxl_status_str(s), sdxl_last_error()); return 1; }
    const char *req = "{\"request_id\":\"c\",\"data\":{\"prompt\":\"a cube\",\"models\":{\"base\":\"tiny-sdxl\"},"
                      "\"hyperparameters\":{\"num_inference_steps\":3,\"seed\":5},\"output\":{\"format\":\"png\"}}}";
    char *response = NULL;
    sdxl_image_batch *batch = NULL;
    unsigned mode = fp_mode();
    s = sdxl_generate_images(engine, req, on_progress, NULL, &response, &batch);
    if (s != SDXL_STATUS_OK) { fprintf(stderr, "generate: %s: %s\n", sdxl_status_str(s), sdxl_last_error()); return 1; }
    if (fp_mode() != mode) { fprintf(stderr, "generate changed the thread's FTZ/DAZ bits\n"); return 1; }
    int ok = strstr(response, "\"success\":true") != NULL && batch != NULL && batch->count == 1 &&
             batch->images[0].width == 64 && batch->images[0].height == 64 && batch->images[0].stride == 192 &&
             batch->images[0].seed == 5 && steps_seen == 3;
    sdxl_image_batch_free(batch);
    sdxl_string_free(response);
    /* ABI misuse is an error code, not a crash. */
    if (sdxl_generate(engine, NULL, NULL, NULL, &response) != SDXL_STATUS_NULL_ARGUMENT) ok = 0;
    sdxl_engine_free(engine);
    if (sdxl_cancel(engine, "c") != SDXL_STATUS_INVALID_HANDLE) ok = 0;
    printf("%s version %s\n", ok ? "ok" : "FAILED", sdxl_version());
    return ok ? 0 : 1;
}
