"""Make PyPI's CUDA build of torch importable on a CPU-only box without ~3 GB of nvidia-* wheels.

libtorch_python.so links libtorch_cuda.so, which links cuDNN, cuBLAS, cuFFT, cuSPARSE(Lt),
cuRAND, cuFile, NCCL and NVSHMEM. A CPU run never calls into them, but the dynamic loader
must find every NEEDED library and every versioned symbol. For each library `ldd` reports
as missing, this compiles a tiny stand-in (same soname, same symbol versions, every referenced
symbol defined as a function that aborts with a clear message) into torch/lib. torch/lib is
the LAST entry of libtorch's RPATH, so a real nvidia-* wheel installed later takes precedence.

Usage: <venv>/bin/python scripts/torch_cuda_stubs.py   (needs cc, ldd, readelf)
"""
import collections, os, re, subprocess, sysconfig, tempfile

LIB = os.path.join(sysconfig.get_paths()["purelib"], "torch", "lib")
ROOT = os.path.join(LIB, "libtorch_python.so")  # what `import torch` loads


def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout


missing = sorted(set(re.findall(r"^\s*(\S+) => not found", sh("ldd", ROOT), re.M)))
if not missing:
    raise SystemExit(0)
# version name -> soname, from the "Version needs" sections of torch's own libraries
ver2lib = {}
for so in os.listdir(LIB):
    if ".so" in so:
        cur = None
        for line in sh("readelf", "-V", "-W", os.path.join(LIB, so)).splitlines():
            if m := re.search(r"File: (\S+)", line):
                cur = m.group(1)
            elif (m := re.search(r"Name: (\S+)", line)) and cur in missing:
                ver2lib[m.group(1)] = cur
syms = collections.defaultdict(set)
for m in re.finditer(r"undefined symbol: (\w+)(?:, version (\S+))?", sh("ldd", "-r", ROOT)):
    name, ver = m.groups()
    if ver:
        owner = ver2lib.get(ver)
    else:  # unversioned (NCCL, cuSPARSELt, cuFile, ...): match the soname stem, longest first
        stems = [(len(s), s) for s in missing if name.lower().startswith(s[3:].split(".")[0].lower())]
        owner = max(stems)[1] if stems else None  # None: Py* etc., resolved from python itself
    if owner:
        syms[owner].add(name)

with tempfile.TemporaryDirectory() as tmp:
    for so in missing:
        names = sorted(syms[so])
        c = os.path.join(tmp, "stub.c")
        with open(c, "w") as f:
            f.write('#include <stdio.h>\n#include <stdlib.h>\nstatic void die(const char *s) {\n'
                    f'  fprintf(stderr, "{so} is a CPU-only stub (scripts/torch_cuda_stubs.py); %s called\\n", s);\n'
                    "  abort();\n}\n")
            f.writelines(f'void {n}(void) {{ die("{n}"); }}\n' for n in names)
        vers = sorted(v for v, lib in ver2lib.items() if lib == so)
        script = os.path.join(tmp, "vers.map")
        with open(script, "w") as f:  # first version node holds the symbols, others just exist
            f.write("".join(f"{v} {{ {'global: ' + ' '.join(n + ';' for n in names) if i == 0 else ''} }};\n"
                            for i, v in enumerate(vers)) or "{ global: *; };\n")
        subprocess.run(["cc", "-shared", "-fPIC", "-O0", "-o", os.path.join(LIB, so), c,
                        f"-Wl,-soname,{so}", f"-Wl,--version-script,{script}"], check=True)
        print(f"stub {so}: {len(names)} symbols, versions {vers or '-'}")
