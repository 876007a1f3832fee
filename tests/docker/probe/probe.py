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
    time.sleep(args.sleep)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
