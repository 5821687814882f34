#!/usr/bin/env python3
"""Generates bindings/csharp/SdxlRt/NativeMethods.g.cs from include/sdxlrt.h (the cbindgen header).

The header is the ABI's single source of truth and is itself generated from src/ffi/ and checked for staleness, so
reading it keeps the C# in step with the Rust without libclang: cbindgen writes one regular C dialect, and this
script understands exactly that dialect (documented #defines, enums with explicit values, opaque and plain structs,
one callback typedef, function prototypes). Anything else in the header is an error, never silently skipped, except
the `*_ALL` list macros, which are not C# constants.

Usage:
  gen_native_methods.py HEADER OUT.cs        write OUT.cs (only when it changed)
  gen_native_methods.py HEADER OUT.cs --check
                                             exit 1 with a diff when OUT.cs is not what HEADER generates
Stdlib only.
"""
import difflib
import re
import sys

LIB_NAME = "sdxlrt"

# Opaque handle types and the SafeHandle class that carries them across P/Invoke. A function whose name ends in
# `_free` takes the raw IntPtr instead (SafeHandle.ReleaseHandle calls it with its handle value).
HANDLE_TYPES = {"sdxl_engine": "SdxlHandle"}

SCALARS = {
    "void": "void",
    "int8_t": "sbyte",
    "uint8_t": "byte",
    "int16_t": "short",
    "uint16_t": "ushort",
    "int32_t": "int",
    "uint32_t": "uint",
    "int64_t": "long",
    "uint64_t": "ulong",
    "size_t": "UIntPtr",
    "uintptr_t": "UIntPtr",
    "intptr_t": "IntPtr",
    "double": "double",
    "float": "float",
    "bool": "bool",
}


class HeaderError(Exception):
    pass


def pascal(name):
    return "".join(part[:1].upper() + part[1:].lower() for part in name.split("_") if part)


def cs_type_name(c_name):
    """C type name -> C# type name for enums and structs (`sdxl_status` -> `SdxlStatus`)."""
    return pascal(c_name)


def xml_escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def doc_lines(doc, indent):
    """A C doc comment's text as a /// <summary> block."""
    if not doc:
        return []
    pad = " " * indent
    out = [pad + "/// <summary>"]
    for line in doc:
        out.append((pad + "/// " + xml_escape(line)).rstrip())
    out.append(pad + "/// </summary>")
    return out


def strip_doc(block):
    """The text lines of a `/** ... */` comment."""
    lines = []
    for raw in block.splitlines():
        line = raw.strip()
        if line.startswith("/**"):
            line = line[3:]
        if line.endswith("*/"):
            line = line[:-2]
        line = line.strip()
        if line.startswith("*"):
            line = line[1:]
            if line.startswith(" "):
                line = line[1:]
        lines.append(line.rstrip())
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


TOKEN = re.compile(
    r"(?P<doc>/\*\*.*?\*/)|(?P<comment>/\*.*?\*/|//[^\n]*)|(?P<pp>^[ \t]*#[^\n]*(?:\\\n[^\n]*)*)|(?P<stmt>[^;{}#/]+(?:\{[^{}]*\})?[^;{}#/]*;)",
    re.S | re.M,
)


def strip_cplusplus(header):
    """Removes cbindgen's C/C++ portability scaffolding, keeping the C declarations."""
    # `enum X\n#if defined(__cplusplus) || ...\n  : uint32_t\n#endif ...\n {` -> `enum X : uint32_t {`
    header = re.sub(r"\n#if defined\(__cplusplus\)[^\n]*\n\s*:\s*(\w+)\s*\n#endif[^\n]*\n\s*", r" : \1 ", header)
    # `#ifndef __cplusplus ... #endif // __cplusplus` (the enum typedefs) and `#ifdef __cplusplus ... #endif`.
    header = re.sub(r"^#ifndef __cplusplus\n.*?^#endif // __cplusplus\n", "", header, flags=re.S | re.M)
    header = re.sub(r"^#ifdef __cplusplus\n.*?^#endif[^\n]*\n", "", header, flags=re.S | re.M)
    return header


def parse(header):
    """Returns (consts, enums, structs, callbacks, functions, opaque), each a list, in header order."""
    header = strip_cplusplus(header)
    consts, enums, structs, callbacks, functions, opaque = [], [], [], [], [], []
    pending_doc = None
    pos = 0
    text = header
    while pos < len(text):
        m = TOKEN.search(text, pos)
        if not m:
            rest = text[pos:].strip()
            if rest:
                raise HeaderError("cannot parse header text: %r" % rest[:80])
            break
        between = text[pos : m.start()].strip()
        if between:
            raise HeaderError("cannot parse header text: %r" % between[:80])
        pos = m.end()
        if m.group("doc"):
            pending_doc = strip_doc(m.group("doc"))
            continue
        if m.group("comment"):
            continue
        if m.group("pp"):
            line = m.group("pp").strip()
            dm = re.match(r"#define\s+([A-Za-z_]\w*)\s+(.+)$", line)
            if dm and pending_doc is not None:
                name, value = dm.group(1), dm.group(2).strip()
                if name.endswith("_ALL") and value.startswith("{"):
                    pending_doc = None
                    continue
                consts.append({"name": name, "value": value, "doc": pending_doc})
            elif dm and not dm.group(1).endswith("_H"):
                raise HeaderError("undocumented #define %s" % dm.group(1))
            pending_doc = None
            continue
        stmt = " ".join(m.group("stmt").split())
        doc, pending_doc = pending_doc or [], None
        if stmt.startswith("enum "):
            enums.append(parse_enum(m.group("stmt"), doc))
        elif re.match(r"typedef struct (\w+) \1;$", stmt):
            opaque.append(re.match(r"typedef struct (\w+)", stmt).group(1))
        elif stmt.startswith("typedef struct"):
            structs.append(parse_struct(m.group("stmt"), doc))
        elif re.match(r"typedef [\w\s\*]+\(\*\w+\)\(.*\);$", stmt):
            callbacks.append(parse_callback(stmt, doc))
        elif stmt.startswith("typedef enum") or stmt.startswith("typedef uint32_t"):
            continue  # the C-version-dependent enum typedefs after each enum
        elif stmt.startswith("typedef"):
            raise HeaderError("unsupported typedef: %s" % stmt)
        elif stmt.startswith("extern") or stmt == "}":
            continue
        elif re.match(r"[\w\s\*]+\(.*\);$", stmt):
            functions.append(parse_function(stmt, doc))
        else:
            raise HeaderError("unsupported declaration: %s" % stmt)
    return consts, enums, structs, callbacks, functions, opaque


def parse_enum(stmt, doc):
    name = re.match(r"\s*enum\s+(\w+)", stmt).group(1)
    underlying = "uint" if "uint32_t" in stmt else "int"
    body = stmt[stmt.index("{") + 1 : stmt.rindex("}")]
    members, mdoc = [], []
    for m in re.finditer(r"(/\*\*.*?\*/)|([A-Z_][A-Z0-9_]*)\s*=\s*([^,]+),", body, re.S):
        if m.group(1):
            mdoc = strip_doc(m.group(1))
            continue
        members.append({"name": m.group(2), "value": m.group(3).strip(), "doc": mdoc})
        mdoc = []
    prefix = name.upper() + "_"
    for member in members:
        if not member["name"].startswith(prefix):
            raise HeaderError("enum %s member %s lacks the prefix %s" % (name, member["name"], prefix))
        member["cs"] = pascal(member["name"][len(prefix) :])
    return {"name": name, "underlying": underlying, "members": members, "doc": doc}


def parse_struct(stmt, doc):
    name = re.match(r"\s*typedef struct (\w+)", stmt).group(1)
    body = stmt[stmt.index("{") + 1 : stmt.rindex("}")]
    fields, fdoc = [], []
    for m in re.finditer(r"(/\*\*.*?\*/)|([^;/]+);", body, re.S):
        if m.group(1):
            fdoc = strip_doc(m.group(1))
            continue
        decl = " ".join(m.group(2).split())
        fm = re.match(r"(.+?)\s*(\w+)$", decl)
        fields.append({"ctype": fm.group(1), "name": fm.group(2), "doc": fdoc})
        fdoc = []
    return {"name": name, "fields": fields, "doc": doc}


def split_params(params):
    params = params.strip()
    if params in ("", "void"):
        return []
    out = []
    for p in params.split(","):
        p = " ".join(p.split())
        pm = re.match(r"(.+?)\s*(\w+)$", p)
        out.append({"ctype": pm.group(1), "name": pm.group(2)})
    return out


def parse_callback(stmt, doc):
    m = re.match(r"typedef (.+?)\s*\(\*(\w+)\)\((.*)\);$", stmt)
    return {"ret": m.group(1), "name": m.group(2), "params": split_params(m.group(3)), "doc": doc}


def parse_function(stmt, doc):
    m = re.match(r"(.+?)\s*\b(\w+)\((.*)\);$", stmt)
    return {"ret": m.group(1), "name": m.group(2), "params": split_params(m.group(3)), "doc": doc}


class Mapper:
    def __init__(self, enums, structs, callbacks, opaque):
        self.enums = {e["name"] for e in enums}
        self.structs = {s["name"] for s in structs}
        self.callbacks = {c["name"] for c in callbacks}
        self.opaque = set(opaque)

    def base(self, ctype):
        t = ctype.replace("const ", "").replace("struct ", "").replace("enum ", "").strip()
        stars = t.count("*")
        return t.replace("*", "").strip(), stars

    def field(self, ctype):
        """Struct field types: pointers stay IntPtr (read with Marshal / unsafe code in Interop.cs)."""
        t, stars = self.base(ctype)
        if stars:
            return "IntPtr"
        return self.value(t, ctype)

    def value(self, t, ctype):
        if t in SCALARS:
            return SCALARS[t]
        if t in self.enums:
            return cs_type_name(t)
        if t in self.structs:
            return cs_type_name(t)
        if t in self.callbacks:
            return t
        raise HeaderError("no C# mapping for type %r" % ctype)

    def param(self, ctype, func):
        t, stars = self.base(ctype)
        if stars == 0:
            return self.value(t, ctype)
        if t in self.opaque:
            if t in HANDLE_TYPES and not func.endswith("_free"):
                return ("out " if stars == 2 else "") + HANDLE_TYPES[t]
            return "out IntPtr" if stars == 2 else "IntPtr"
        if stars == 2:
            return "out IntPtr"
        if t == "char" and ctype.startswith("const"):
            return "byte[]"  # NUL-terminated UTF-8, built by Interop.Utf8z
        return "IntPtr"

    def ret(self, ctype):
        t, stars = self.base(ctype)
        if stars:
            return "IntPtr"
        return self.value(t, ctype)


def const_value(raw):
    """(C# type, literal) for a #define's value."""
    v = raw.strip()
    if re.fullmatch(r"-?\d+\.\d*(e[+-]?\d+)?", v):
        return "double", v
    if re.fullmatch(r"[\d\s\(\)<+\-*]+", v):
        n = eval(v, {"__builtins__": {}})  # digits, parens, shifts and arithmetic only (checked above)
        if -(2**31) <= n < 2**31:
            return "int", str(n)
        if 0 <= n < 2**64:
            return "ulong", "%dUL" % n
        return "long", "%dL" % n
    if re.fullmatch(r'"[^"\\]*"', v):
        return "string", v
    raise HeaderError("unsupported #define value %r" % raw)


def generate(header_text, header_name="include/sdxlrt.h"):
    consts, enums, structs, callbacks, functions, opaque = parse(header_text)
    mapper = Mapper(enums, structs, callbacks, opaque)
    o = []
    w = o.append
    w("// <auto-generated>")
    w("// Generated by bindings/csharp/tools/gen_native_methods.py from %s. Do not edit:" % header_name)
    w("// change src/ffi/, rebuild (cbindgen rewrites the header), then run the generator; scripts/csharp_test.sh")
    w("// fails when this file is stale.")
    w("// </auto-generated>")
    w("using System;")
    w("using System.Runtime.InteropServices;")
    w("")
    w("namespace SdxlRt")
    w("{")
    for e in enums:
        o.extend(doc_lines(e["doc"], 4))
        w("    public enum %s : %s" % (cs_type_name(e["name"]), e["underlying"]))
        w("    {")
        for m in e["members"]:
            o.extend(doc_lines(m["doc"], 8))
            w("        %s = %s," % (m["cs"], m["value"]))
        w("    }")
        w("")
    for s in structs:
        o.extend(doc_lines(s["doc"], 4))
        w("    [StructLayout(LayoutKind.Sequential)]")
        w("    internal struct %s" % cs_type_name(s["name"]))
        w("    {")
        for f in s["fields"]:
            o.extend(doc_lines(f["doc"], 8))
            w("        public %s %s;" % (mapper.field(f["ctype"]), f["name"]))
        w("    }")
        w("")
    w("    /// <summary>Raw P/Invoke declarations of the sdxlrt C ABI, one per function in the header.</summary>")
    w("    internal static partial class NativeMethods")
    w("    {")
    w("        /// <summary>The native library's name as DllImport resolves it (libsdxlrt.so on Linux).</summary>")
    w('        internal const string LibName = "%s";' % LIB_NAME)
    for c in consts:
        cs_t, lit = const_value(c["value"])
        w("")
        o.extend(doc_lines(c["doc"], 8))
        w("        internal const %s %s = %s;" % (cs_t, pascal(c["name"]), lit))
    for cb in callbacks:
        w("")
        o.extend(doc_lines(cb["doc"], 8))
        w("        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]")
        params = ", ".join("%s %s" % (mapper.field(p["ctype"]), p["name"]) for p in cb["params"])
        w("        internal delegate %s %s(%s);" % (mapper.ret(cb["ret"]), cb["name"], params))
    for f in functions:
        w("")
        o.extend(doc_lines(f["doc"], 8))
        w('        [DllImport(LibName, EntryPoint = "%s", CallingConvention = CallingConvention.Cdecl, ExactSpelling = true)]' % f["name"])
        params = ", ".join("%s %s" % (mapper.param(p["ctype"], f["name"]), p["name"]) for p in f["params"])
        w("        internal static extern %s %s(%s);" % (mapper.ret(f["ret"]), f["name"], params))
    w("    }")
    w("}")
    return "\n".join(o) + "\n"


def main(argv):
    if len(argv) not in (3, 4) or (len(argv) == 4 and argv[3] != "--check"):
        sys.stderr.write(__doc__)
        return 2
    header_path, out_path = argv[1], argv[2]
    with open(header_path, encoding="utf-8") as f:
        text = generate(f.read())
    try:
        with open(out_path, encoding="utf-8") as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if len(argv) == 4:
        if current == text:
            print("NativeMethods.g.cs is up to date with %s" % header_path)
            return 0
        diff = difflib.unified_diff((current or "").splitlines(True), text.splitlines(True), out_path, "regenerated")
        sys.stdout.writelines(diff)
        print("error: %s is stale; run: python3 %s %s %s" % (out_path, argv[0], header_path, out_path))
        return 1
    if current != text:
        with open(out_path, "w", encoding="utf-8") as f:
            f.write(text)
        print("wrote %s" % out_path)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except HeaderError as e:
        sys.stderr.write("gen_native_methods: %s\n" % e)
        sys.exit(1)
