"""A job that reports what the runtime gave it (environment, shm, working dir, mounts), for the contract tests."""

import argparse
import errno
import json
import os
import sys
import time


def writable(path: str) -> str:
    try:
        with open(os.path.join(path, ".probe-write"), "w") as f:
            f.write("x")
        return "yes"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--input", default="")
    parser.add_argument("--hog-mb", type=int, default=0, help="on node --hog-node, hold this much memory")
    parser.add_argument("--hog-node", type=int, default=0)
    parser.add_argument("--fill-mb", type=int, default=0, help="then write this much to outputs/fill.bin")
    args = parser.parse_args()
    shm = os.statvfs("/dev/shm")
    files = sorted(os.path.relpath(os.path.join(top, n), ".") for top, dirs, names in os.walk(".")
                   for n in names if not top.startswith(("./outputs", "./logs")))
    report = {
        "env": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid(), "gid": os.getgid(),
        "shm_bytes": shm.f_blocks * shm.f_frsize, "files": files, "argv": sys.argv[1:],
        "cwd_writable": writable("."), "input_writable": writable(args.input) if args.input else "",
        "input_files": sorted(os.listdir(args.input)) if args.input else [],
    }
    os.makedirs("outputs", exist_ok=True)
    with open("outputs/probe.json", "w") as f:
        json.dump(report, f, indent=1)
    print("probe: to stdout")
    print("probe: to stderr", file=sys.stderr)
    if args.hog_mb and int(os.environ.get("NODE_RANK", "0")) == args.hog_node:
        print(f"probe: holding {args.hog_mb} MiB", flush=True)
        hog = b"\x01" * (args.hog_mb << 20)  # written, so every page is resident
        print(f"probe: held {len(hog) >> 20} MiB", flush=True)
    if args.fill_mb:
        with open("outputs/fill.bin", "wb") as f:  # a full disk fails this as it fails any script: OSError
            for _ in range(args.fill_mb):
                f.write(b"\x02" * (1 << 20))
                f.flush()
    time.sleep(args.sleep)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
