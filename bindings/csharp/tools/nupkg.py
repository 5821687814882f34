#!/usr/bin/env python3
"""Builds, checks and lays out the SdxlRt NuGet package with the standard library only.

Debian's nuget 2.8 cannot write netstandard2.0 dependency groups or license expressions, and no .NET SDK is
available here, so the .nupkg (an OPC zip: nuspec, [Content_Types].xml, _rels/.rels, core properties, payload)
is written directly.

  nupkg.py pack --id ID --version V --ort-package PKG --ort-version V2 --readme README.md --out DIR
                [--repository URL] FILE=PACKAGE/PATH ...
  nupkg.py check PKG.nupkg --version V --header include/sdxlrt.h
  nupkg.py consumer PKG.nupkg --ort-lib LIBONNXRUNTIME --ort-package PKG --ort-version V2 --app-dir DIR --gp DIR
                (extracts into a NuGet global-packages folder and writes DIR/SdxlRt.Tests.deps.json as the SDK would)
"""
import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import struct
import sys
import zipfile
from xml.etree import ElementTree as ET

NUSPEC_NS = "http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd"
CT_NS = "http://schemas.openxmlformats.org/package/2006/content-types"
RELS_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
MANIFEST_REL = "http://schemas.microsoft.com/packaging/2010/07/manifest"
CORE_REL = "http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties"
# A fixed timestamp keeps the package byte-identical for identical inputs.
ZIP_TIME = (2020, 1, 1, 0, 0, 0)
TFM = ".NETStandard2.0"
RID = "linux-x64"


def xml_text(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def nuspec(a, files):
    repo = '\n    <repository type="git" url="%s" />' % xml_text(a.repository) if a.repository else ""
    return """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="%(ns)s">
  <metadata>
    <id>%(id)s</id>
    <version>%(version)s</version>
    <title>%(id)s</title>
    <authors>sdxlrt contributors</authors>
    <description>Stable Diffusion XL on ONNX Runtime, in process, for .NET: EnhancedSDXLRequest, GenerateEnhancedAsync with progress and cancellation, raw pixels. Linux x64. Depends on %(ort)s for ONNX Runtime's native library.</description>
    <license type="expression">MIT OR Apache-2.0</license>
    <readme>README.md</readme>%(repo)s
    <tags>stable-diffusion sdxl onnxruntime image-generation native</tags>
    <dependencies>
      <group targetFramework="%(tfm)s">
        <dependency id="%(ort)s" version="%(ortv)s" exclude="Build,Analyzers" />
      </group>
    </dependencies>
  </metadata>
</package>
""" % {"ns": NUSPEC_NS, "id": xml_text(a.id), "version": xml_text(a.version), "ort": xml_text(a.ort_package),
       "ortv": xml_text(a.ort_version), "repo": repo, "tfm": TFM}


def content_types(names):
    exts = sorted({n.rsplit(".", 1)[1].lower() for n in names if "." in n.rsplit("/", 1)[-1]})
    types = {"rels": "application/vnd.openxmlformats-package.relationships+xml",
             "psmdcp": "application/vnd.openxmlformats-package.core-properties+xml"}
    body = "".join('<Default Extension="%s" ContentType="%s" />' % (e, types.get(e, "application/octet")) for e in exts)
    return '<?xml version="1.0" encoding="utf-8"?><Types xmlns="%s">%s</Types>' % (CT_NS, body)


def write_entry(z, name, data):
    info = zipfile.ZipInfo(name, ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    z.writestr(info, data)


def cmd_pack(a):
    payload = []
    for spec in a.files:
        src, dst = spec.split("=", 1)
        payload.append((dst, open(src, "rb").read()))
    payload.append(("README.md", open(a.readme, "rb").read()))
    spec_name = "%s.nuspec" % a.id
    spec = nuspec(a, payload).encode("utf-8")
    digest = hashlib.sha256(spec + b"".join(d for _, d in payload)).hexdigest()
    core = "package/services/metadata/core-properties/%s.psmdcp" % digest[:32]
    rels = ('<?xml version="1.0" encoding="utf-8"?><Relationships xmlns="%s">'
            '<Relationship Type="%s" Target="/%s" Id="R%s" />'
            '<Relationship Type="%s" Target="/%s" Id="R%s" /></Relationships>'
            % (RELS_NS, MANIFEST_REL, spec_name, digest[:16], CORE_REL, core, digest[16:32]))
    props = ('<?xml version="1.0" encoding="utf-8"?><coreProperties '
             'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:dcterms="http://purl.org/dc/terms/" '
             'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
             'xmlns="http://schemas.openxmlformats.org/package/2006/metadata/core-properties">'
             '<dc:creator>sdxlrt contributors</dc:creator><dc:description>%s</dc:description>'
             '<dc:identifier>%s</dc:identifier><version>%s</version><keywords>stable-diffusion sdxl onnxruntime</keywords>'
             '<lastModifiedBy>scripts/pack_nuget.sh</lastModifiedBy></coreProperties>'
             % ("Stable Diffusion XL on ONNX Runtime for .NET", xml_text(a.id), xml_text(a.version)))
    names = ["_rels/.rels", spec_name, core] + [n for n, _ in payload]
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "%s.%s.nupkg" % (a.id, a.version))
    with zipfile.ZipFile(path, "w") as z:
        write_entry(z, "_rels/.rels", rels)
        write_entry(z, spec_name, spec)
        for name, data in payload:
            write_entry(z, name, data)
        write_entry(z, core, props)
        write_entry(z, "[Content_Types].xml", content_types(names + ["[Content_Types].xml"]))
    print(path)


class CheckError(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise CheckError(msg)


def pe_is_managed(data):
    """A PE image with a CLI (COR20) header: a .NET assembly."""
    need(data[:2] == b"MZ", "not a PE file (no MZ)")
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    need(data[pe : pe + 4] == b"PE\0\0", "not a PE file (no PE signature)")
    opt = pe + 24
    magic = struct.unpack_from("<H", data, opt)[0]
    dirs = opt + (96 if magic == 0x10B else 112)
    rva, size = struct.unpack_from("<II", data, dirs + 14 * 8)
    return rva != 0 and size != 0


def elf_dynamic_symbols(data):
    """(e_machine, exported defined function names) of a 64-bit little-endian ELF shared object."""
    need(data[:4] == b"\x7fELF", "not an ELF file")
    need(data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    need(e_type == 3, "ELF type %d is not a shared object" % e_type)
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for sh in sections:
        if sh[1] != 11:  # SHT_DYNSYM
            continue
        strtab = sections[sh[6]]
        for off in range(sh[4], sh[4] + sh[5], sh[9]):
            st_name, st_info, _other, st_shndx = struct.unpack_from("<IBBH", data, off)
            if st_shndx == 0 or (st_info & 0xF) != 2 or (st_info >> 4) not in (1, 2):
                continue  # undefined, not a function, or local
            start = strtab[4] + st_name
            names.add(data[start : data.index(b"\0", start)].decode())
    return e_machine, names


def header_functions(path):
    text = open(path, encoding="utf-8").read()
    return set(re.findall(r"^[\w][\w \*]*?\b(sdxl_\w+)\(", text, re.M))


def cmd_check(a):
    z = zipfile.ZipFile(a.package)
    names = z.namelist()
    need(len(names) == len(set(names)), "duplicate zip entries")
    for n in names:
        need("\\" not in n and not n.startswith("/") and ".." not in n.split("/"), "bad entry name %r" % n)
    specs = [n for n in names if n.endswith(".nuspec")]
    need(len(specs) == 1 and "/" not in specs[0], "expected exactly one nuspec at the root, got %s" % specs)
    root = ET.fromstring(z.read(specs[0]))
    need(root.tag == "{%s}package" % NUSPEC_NS, "nuspec root is %s, expected the 2013/05 nuspec package" % root.tag)
    md = root.find("{%s}metadata" % NUSPEC_NS)
    need(md is not None, "nuspec has no metadata")

    def field(tag):
        el = md.find("{%s}%s" % (NUSPEC_NS, tag))
        return el

    for tag in ("id", "version", "authors", "description", "license", "readme"):
        need(field(tag) is not None and (field(tag).text or "").strip(), "nuspec lacks <%s>" % tag)
    pid, ver = field("id").text, field("version").text
    need(re.fullmatch(r"[A-Za-z0-9_]+(?:[.-][A-Za-z0-9_]+)*", pid), "invalid id %r" % pid)
    need(re.fullmatch(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?", ver), "invalid version %r" % ver)
    need(ver == a.version, "nuspec version %s != Cargo.toml version %s" % (ver, a.version))
    need(os.path.basename(a.package) == "%s.%s.nupkg" % (pid, ver), "file name does not match id and version")
    need(specs[0] == pid + ".nuspec", "nuspec name %s does not match the id" % specs[0])
    lic = field("license")
    need(lic.get("type") == "expression" and lic.text == "MIT OR Apache-2.0", "license is not the crate's expression")
    need(field("readme").text in names, "readme %s is not in the package" % field("readme").text)
    groups = md.findall("{%s}dependencies/{%s}group" % (NUSPEC_NS, NUSPEC_NS))
    need(len(groups) == 1 and groups[0].get("targetFramework") == TFM, "expected one %s dependency group" % TFM)
    deps = {d.get("id"): d.get("version") for d in groups[0]}
    need(any(k.startswith("Microsoft.ML.OnnxRuntime") for k in deps), "no Microsoft.ML.OnnxRuntime dependency")

    ct = ET.fromstring(z.read("[Content_Types].xml"))
    exts = {d.get("Extension").lower() for d in ct.findall("{%s}Default" % CT_NS)}
    for n in names:
        base = n.rsplit("/", 1)[-1]
        if "." in base and n != "[Content_Types].xml":
            need(base.rsplit(".", 1)[1].lower() in exts, "[Content_Types].xml does not cover %s" % n)
    rels = ET.fromstring(z.read("_rels/.rels"))
    targets = {r.get("Type"): r.get("Target") for r in rels}
    need(targets.get(MANIFEST_REL) == "/" + specs[0], "_rels/.rels does not point at the nuspec")
    need(targets.get(CORE_REL, "/")[1:] in names, "_rels/.rels core properties missing")

    dll = "lib/netstandard2.0/SdxlRt.dll"
    need(dll in names, "missing %s" % dll)
    need(pe_is_managed(z.read(dll)), "%s is not a managed assembly" % dll)
    need("lib/netstandard2.0/SdxlRt.xml" in names, "missing the XML docs")
    ET.fromstring(z.read("lib/netstandard2.0/SdxlRt.xml"))
    for n in names:
        if n.startswith("lib/"):
            need(n.split("/")[1] == "netstandard2.0", "unexpected lib folder in %s" % n)
        if n.startswith("runtimes/"):
            need(re.fullmatch(r"runtimes/%s/native/[^/]+" % RID, n), "native asset outside runtimes/%s/native: %s" % (RID, n))
    so = "runtimes/%s/native/libsdxlrt.so" % RID
    need(so in names, "missing %s" % so)
    machine, symbols = elf_dynamic_symbols(z.read(so))
    need(machine == 62, "libsdxlrt.so e_machine %d is not x86-64 (62) for %s" % (machine, RID))
    want = header_functions(a.header)
    need(want, "no functions found in %s" % a.header)
    missing = sorted(want - symbols)
    need(not missing, "libsdxlrt.so does not export %s" % missing)
    print("package OK: %s %s, %d entries, exports %d/%d header functions, depends on %s"
          % (pid, ver, len(names), len(want), len(want), ", ".join("%s %s" % kv for kv in sorted(deps.items()))))


def sha512_b64(path):
    return base64.b64encode(hashlib.sha512(open(path, "rb").read()).digest()).decode()


def extract_to_global_packages(package_path, pid, ver, gp):
    """The layout `dotnet restore` leaves in ~/.nuget/packages."""
    dest = os.path.join(gp, pid.lower(), ver)
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    with zipfile.ZipFile(package_path) as z:
        for n in z.namelist():
            if n.startswith(("_rels/", "package/")) or n == "[Content_Types].xml":
                continue
            target = os.path.join(dest, n.lower() if n.endswith(".nuspec") else n)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(z.read(n))
    shutil.copy(package_path, os.path.join(dest, "%s.%s.nupkg" % (pid.lower(), ver)))
    with open(os.path.join(dest, "%s.%s.nupkg.sha512" % (pid.lower(), ver)), "w") as f:
        f.write(sha512_b64(package_path))
    return dest


def cmd_consumer(a):
    with zipfile.ZipFile(a.package) as z:
        spec = [n for n in z.namelist() if n.endswith(".nuspec")][0]
        md = ET.fromstring(z.read(spec)).find("{%s}metadata" % NUSPEC_NS)
    pid = md.find("{%s}id" % NUSPEC_NS).text
    ver = md.find("{%s}version" % NUSPEC_NS).text
    extract_to_global_packages(a.package, pid, ver, a.gp)
    # Stand-in for the Microsoft.ML.OnnxRuntime package (no NuGet feed is reachable here): the same ONNX Runtime
    # build from .deps/, at the path that package puts its native library.
    ort_dir = os.path.join(a.gp, a.ort_package.lower(), a.ort_version)
    shutil.rmtree(ort_dir, ignore_errors=True)
    native = os.path.join(ort_dir, "runtimes", RID, "native")
    os.makedirs(native)
    shutil.copy(a.ort_lib, os.path.join(native, "libonnxruntime.so"))
    with open(os.path.join(ort_dir, "%s.%s.nupkg.sha512" % (a.ort_package.lower(), a.ort_version)), "w") as f:
        f.write(base64.b64encode(hashlib.sha512(b"stand-in").digest()).decode())
    app = "SdxlRt.Tests"
    native_asset = {"rid": RID, "assetType": "native", "fileVersion": "0.0.0.0"}
    deps = {
        "runtimeTarget": {"name": ".NETCoreApp,Version=v8.0", "signature": ""},
        "compilationOptions": {},
        "targets": {
            ".NETCoreApp,Version=v8.0": {
                "%s/1.0.0" % app: {"dependencies": {pid: ver}, "runtime": {"%s.exe" % app: {}}},
                "%s/%s" % (pid, ver): {
                    "dependencies": {a.ort_package: a.ort_version},
                    "runtime": {"lib/netstandard2.0/SdxlRt.dll": {"assemblyVersion": ver + ".0", "fileVersion": ver + ".0"}},
                    "runtimeTargets": {"runtimes/%s/native/libsdxlrt.so" % RID: native_asset},
                },
                "%s/%s" % (a.ort_package, a.ort_version): {
                    "runtimeTargets": {"runtimes/%s/native/libonnxruntime.so" % RID: native_asset},
                },
            }
        },
        "libraries": {
            "%s/1.0.0" % app: {"type": "project", "serviceable": False, "sha512": ""},
            "%s/%s" % (pid, ver): {
                "type": "package", "serviceable": True, "sha512": "sha512-" + sha512_b64(a.package),
                "path": "%s/%s" % (pid.lower(), ver), "hashPath": "%s.%s.nupkg.sha512" % (pid.lower(), ver),
            },
            "%s/%s" % (a.ort_package, a.ort_version): {
                "type": "package", "serviceable": True, "sha512": "sha512-stand-in",
                "path": "%s/%s" % (a.ort_package.lower(), a.ort_version),
                "hashPath": "%s.%s.nupkg.sha512" % (a.ort_package.lower(), a.ort_version),
            },
        },
    }
    os.makedirs(a.app_dir, exist_ok=True)
    with open(os.path.join(a.app_dir, app + ".deps.json"), "w") as f:
        json.dump(deps, f, indent=2)
    print(os.path.join(a.gp, pid.lower(), ver))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack")
    pk.add_argument("--id", required=True)
    pk.add_argument("--version", required=True)
    pk.add_argument("--ort-package", required=True)
    pk.add_argument("--ort-version", required=True)
    pk.add_argument("--readme", required=True)
    pk.add_argument("--repository")
    pk.add_argument("--out", required=True)
    pk.add_argument("files", nargs="+")
    ck = sub.add_parser("check")
    ck.add_argument("package")
    ck.add_argument("--version", required=True)
    ck.add_argument("--header", required=True)
    co = sub.add_parser("consumer")
    co.add_argument("package")
    co.add_argument("--ort-lib", required=True)
    co.add_argument("--ort-package", required=True)
    co.add_argument("--ort-version", required=True)
    co.add_argument("--app-dir", required=True)
    co.add_argument("--gp", required=True)
    a = p.parse_args()
    try:
        {"pack": cmd_pack, "check": cmd_check, "consumer": cmd_consumer}[a.cmd](a)
    except CheckError as e:
        print("package check failed: %s" % e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
