// Exceptions for sdxlrt statuses. Interop.ExceptionFor is the only place that picks one; SDXL_STATUS_CANCELLED is
// an OperationCanceledException instead.
using System;

namespace SdxlRt
{
    /// <summary>A failed sdxlrt call: the library's status code and its message.</summary>
    public class SdxlException : Exception
    {
        /// <summary>Creates an exception for <paramref name="code"/>.</summary>
        public SdxlException(SdxlStatus code, string message, string responseJson = null)
            : base(message)
        {
            Code = code;
            ResponseJson = responseJson;
        }

        /// <summary>The status the library returned.</summary>
        public SdxlStatus Code { get; private set; }

        /// <summary>The status's stable snake_case name (the response's <c>error_code</c>), e.g. <c>invalid_request</c>.</summary>
        public string CodeName
        {
            get { return Interop.StatusName(Code); }
        }

        /// <summary>The library's JSON reply for this failure (with <c>warnings</c>), when it wrote one; else null.</summary>
        public string ResponseJson { get; private set; }

        /// <summary>The reply parsed, when <see cref="ResponseJson"/> is set; else null.</summary>
        public EnhancedSDXLResponse Response
        {
            get { return ResponseJson == null ? null : EnhancedSDXLResponse.FromJson(ResponseJson); }
        }

        /// <inheritdoc />
        public override string ToString()
        {
            return "[" + CodeName + "] " + base.ToString();
        }
    }

    /// <summary>The request or the engine options were refused: invalid JSON, an invalid field (the message names its
    /// JSON path), an unsupported feature, or an invalid engine option.</summary>
    public class SdxlValidationException : SdxlException
    {
        /// <summary>Creates the exception.</summary>
        public SdxlValidationException(SdxlStatus code, string message, string responseJson = null)
            : base(code, message, responseJson)
        {
        }
    }

    /// <summary>A model folder or file named by the request or the options does not exist.</summary>
    public class SdxlModelNotFoundException : SdxlException
    {
        /// <summary>Creates the exception.</summary>
        public SdxlModelNotFoundException(SdxlStatus code, string message, string responseJson = null)
            : base(code, message, responseJson)
        {
        }
    }

    /// <summary>ONNX Runtime could not be found or loaded (set <see cref="SdxlEngineOptions.OnnxRuntimePath"/>).</summary>
    public class SdxlRuntimeUnavailableException : SdxlException
    {
        /// <summary>Creates the exception.</summary>
        public SdxlRuntimeUnavailableException(SdxlStatus code, string message, string responseJson = null)
            : base(code, message, responseJson)
        {
        }
    }
}
