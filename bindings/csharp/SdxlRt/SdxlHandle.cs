// The native engine pointer as a SafeHandle: P/Invoke adds a reference for the duration of every call that takes
// it, so sdxl_engine_free runs exactly once, after the last call using the handle has returned.
using System;
using System.Runtime.InteropServices;
using System.Threading;

namespace SdxlRt
{
    /// <summary>An <c>sdxl_engine*</c>; released with <c>sdxl_engine_free</c>.</summary>
    internal sealed class SdxlHandle : SafeHandle
    {
        private static int live;

        /// <summary>Used by the P/Invoke marshaller for <c>out SdxlHandle</c>.</summary>
        public SdxlHandle()
            : base(IntPtr.Zero, true)
        {
        }

        /// <summary>Handles created and not yet released in this process (a leak check for tests).</summary>
        internal static int Live
        {
            get { return Volatile.Read(ref live); }
        }

        public override bool IsInvalid
        {
            get { return handle == IntPtr.Zero; }
        }

        protected override bool ReleaseHandle()
        {
            NativeMethods.sdxl_engine_free(handle);
            handle = IntPtr.Zero;
            Interlocked.Decrement(ref live);
            return true;
        }

        /// <summary>Counts a handle sdxl_engine_create filled in (its ReleaseHandle will count it out).</summary>
        internal void MarkCreated()
        {
            Interlocked.Increment(ref live);
        }
    }
}
