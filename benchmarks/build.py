"""dinp build benchmarks: how long `dinp build` takes to turn an archive into a pushed image,
and how big each example's image is.

With the base images warm (made by `dinp build base-images`), each round builds and pushes
  - binary: a 20 MB static executable (hello.c compiled static, padded with random bytes,
    new ones each round so the engine cannot reuse a layer);
  - python: examples/python (bottle vendored), one file changed each round;
and splits the time into what the engine does (build, push) and dinp's own work around it
(unpacking and checking the archive, writing the context, connecting). Then it builds each
example once and prints its image size. Everything it pushes is deleted afterwards.

    .venv/bin/python benchmarks/build.py [--rounds N] [--registry 127.0.0.1:5000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import secrets
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from dinp.build import base_images, builder
from dinp.build.engine import Engine
from dinp.config import BuildConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import delete_from_registry  # noqa: E402

GOAL_OVERHEAD = 3.0


def make_binary_archive(work: Path, hello: Path, size: int) -> Path:
    """hello padded to `size` bytes with fresh random data (an ELF runs with a tail)."""
    data = hello.read_bytes()
    data += os.urandom(size - len(data))
    path = work / f"binary-{secrets.token_hex(3)}.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        for name, content, mode in [("hello", data, 0o755), ("Procfile", b"web: ./hello\n", 0o644)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
    return path


def make_python_archive(work: Path, round_no: int) -> Path:
    src = ROOT / "examples" / "python"
    path = work / f"python-{round_no}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname=".", filter=lambda i: None if "__pycache__" in i.name else i)
        stamp = f"BUILD = {round_no!r}  # {secrets.token_hex(16)}\n".encode()
        info = tarfile.TarInfo("build_stamp.py")
        info.size = len(stamp)
        tar.addfile(info, io.BytesIO(stamp))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--registry", default="127.0.0.1:5000")
    args = parser.parse_args()
    config = BuildConfig(registry=args.registry)
    prefix = f"bench-{secrets.token_hex(2)}"
    rows: dict[str, list[builder.BuildResult]] = {"binary": [], "python": []}
    sizes: dict[str, int] = {}
    cli: dict[str, float] = {}
    apps: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dinp-bench-") as tmp, Engine() as engine:
        work = Path(tmp)
        print("base images:", ", ".join(
            f"{o.type} {o.action}" for o in base_images.ensure(config, engine=engine)),
            file=sys.stderr)
        out = work / "examples"
        subprocess.run(["bash", str(ROOT / "examples" / "build.sh"), str(out)], check=True,
                       capture_output=True)
        hello = work / "hello"
        with tarfile.open(out / "binary.tar.gz") as tar:
            member = tar.extractfile("hello")
            assert member is not None
            hello.write_bytes(member.read())
        try:
            for kind in rows:
                app = f"{prefix}-{kind}"
                apps.append(app)
                for r in range(args.rounds):
                    archive = (make_binary_archive(work, hello, 20 << 20) if kind == "binary"
                               else make_python_archive(work, r))
                    result = builder.build(archive, app=app, version=f"r{r}", config=config,
                                           engine=engine)
                    rows[kind].append(result)
                    print(f"{kind} round {r + 1}: {result.seconds:.2f}s {result.timings}",
                          file=sys.stderr)
                # The same once more through the executable, as a CI step runs it.
                archive = (make_binary_archive(work, hello, 20 << 20) if kind == "binary"
                           else make_python_archive(work, args.rounds))
                start = time.perf_counter()
                subprocess.run([str(Path(sys.executable).parent / "dinp"), "build",
                                str(archive), "--app", app, "--version", "cli",
                                "--registry", args.registry, "--quiet"], check=True,
                               stdout=subprocess.DEVNULL)
                cli[kind] = time.perf_counter() - start
            for path in sorted(out.iterdir()):
                kind = path.name.split(".")[0]
                app = f"{prefix}-ex-{kind}"
                apps.append(app)
                sizes[kind] = builder.build(path, app=app, version="1", config=config,
                                            engine=engine, push=False).size
        finally:
            for app in apps:
                for image in engine.api.images(name=f"{args.registry}/{app}"):
                    with contextlib.suppress(Exception):
                        engine.api.remove_image(image["Id"], force=True)
                delete_from_registry(args.registry, app)

    print(f"\ndinp build benchmark ({args.rounds} rounds, warm base images, registry "
          f"{args.registry})\n")
    print(f"{'archive':34} {'total':>7} {'engine':>7} {'dinp':>7} {'goal':>6} {'CLI':>7}")
    labels = {"binary": "binary: 20 MB static executable", "python": "python: examples/python"}
    for kind, results in rows.items():
        total = statistics.median(r.seconds for r in results)
        engine_s = statistics.median(r.timings.get("build", 0) + r.timings.get("push", 0)
                                     for r in results)
        overhead = statistics.median(
            r.seconds - r.timings.get("build", 0) - r.timings.get("push", 0) for r in results)
        print(f"{labels[kind]:34} {total:6.2f}s {engine_s:6.2f}s {overhead:6.2f}s "
              f"{'<' + str(GOAL_OVERHEAD):>5}s {cli[kind]:6.2f}s")
    print("  (medians; engine = the engine's build and push; dinp = everything else:\n"
          "   unpacking, checks, context; CLI = one whole `dinp build --quiet` process)")
    print(f"\n{'example image':20} {'size':>10}")
    for kind, size in sorted(sizes.items()):
        print(f"{kind:20} {size / 1e6:8.1f} MB")


if __name__ == "__main__":
    main()
