#!/usr/bin/env python3
"""What an fdatasync after a small append costs, growing a file against
writing inside space filled with zeros beforehand: the measurement behind
the store log's preallocated segments (src/store/log.rs).

    python3 bench/fsync-prealloc.py [DIR]    # DIR on the disk to measure; default target/

Prints the mean microseconds per write+fdatasync of 2,000 bytes, 500 of
each, twice, alternated.
"""
import os
import sys
import time


def mean_us(directory, preallocate, rounds=500, size=2000):
    path = os.path.join(directory, "fsync-prealloc.bin")
    if os.path.exists(path):
        os.remove(path)
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        if preallocate:
            os.write(fd, b"\0" * (8 << 20))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        started = time.perf_counter()
        for _ in range(rounds):
            os.write(fd, b"x" * size)
            os.fdatasync(fd)
        return (time.perf_counter() - started) / rounds * 1e6
    finally:
        os.close(fd)
        os.remove(path)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "target"
    os.makedirs(directory, exist_ok=True)
    for _ in range(2):
        print(f"growing the file      {mean_us(directory, False):7.1f} us")
        print(f"inside preallocation  {mean_us(directory, True):7.1f} us")


if __name__ == "__main__":
    main()
