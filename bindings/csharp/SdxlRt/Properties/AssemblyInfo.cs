// Assembly identity. scripts/pack_nuget.sh and scripts/csharp_test.sh compile with -define:SDXLRT_VERSION_FROM_BUILD
// and an AssemblyVersion.g.cs carrying the version from Cargo.toml; an SDK build (SdxlRt.csproj) sets it itself.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

[assembly: InternalsVisibleTo("SdxlRt.Tests")]
[assembly: ComVisible(false)]
[assembly: DefaultDllImportSearchPaths(DllImportSearchPath.AssemblyDirectory | DllImportSearchPath.SafeDirectories)]
