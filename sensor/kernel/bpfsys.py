"""The few bpf(2) commands user space needs, through ctypes: no bcc, so the map reader, the attach
checks and the BPF_PROG_TEST_RUN harness work on any file descriptor, whoever loaded the program."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

_NR_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_NR_MEMBARRIER = {"x86_64": 324, "aarch64": 283, "armv7l": 389, "riscv64": 283, "ppc64le": 365, "s390x": 356}
MEMBARRIER_CMD_QUERY, MEMBARRIER_CMD_GLOBAL = 0, 1

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_PROG_LOAD = 5
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
BPF_MAP_LOOKUP_BATCH = 24
BPF_LINK_CREATE = 28
BPF_LINK_DETACH = 34

BPF_XDP = 37  # enum bpf_attach_type
BPF_MAP_UPDATE_BATCH = 26

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_F_LOCK = 4  # update/lookup take the value's bpf_spin_lock

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    pass


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _NR_BPF.get(os.uname().machine)
    if nr is None:
        raise BpfError(errno.ENOSYS, f"bpf(2) syscall number unknown on {os.uname().machine}")
    ret = _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return ret


def _attr(size: int = 128) -> ctypes.Array:
    return (ctypes.c_ubyte * size)()


def _put(attr: ctypes.Array, offset: int, ctype: type, value: int) -> None:
    ctype.from_buffer(attr, offset).value = value


def _get(attr: ctypes.Array, offset: int, ctype: type) -> int:
    return ctype.from_buffer(attr, offset).value


@cache
def possible_cpus() -> int:
    """Per-CPU map values have one slot per *possible* CPU, not per online one."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


def prog_load(prog_type: int, insns: bytes, name: bytes, license_: bytes = b"GPL") -> int:
    """BPF_PROG_LOAD of raw instructions (8 bytes each); returns the program's fd. On failure the
    verifier's last log line is in the error's message."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license_)
    log = ctypes.create_string_buffer(4096)
    attr = _attr()
    _put(attr, 0, ctypes.c_uint32, prog_type)
    _put(attr, 4, ctypes.c_uint32, len(insns) // 8)
    _put(attr, 8, ctypes.c_uint64, ctypes.addressof(code))
    _put(attr, 16, ctypes.c_uint64, ctypes.addressof(lic))
    _put(attr, 24, ctypes.c_uint32, 1)  # log_level
    _put(attr, 28, ctypes.c_uint32, len(log))
    _put(attr, 32, ctypes.c_uint64, ctypes.addressof(log))
    ctypes.memmove(ctypes.addressof(attr) + 48, name[:15], len(name[:15]))  # prog_name
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except BpfError as e:
        lines = log.value.decode(errors="replace").strip().splitlines()
        raise BpfError(e.errno, f"{e.strerror}" + (f" ({lines[-1]})" if lines else "")) from None


@dataclass
class TestRunResult:
    retval: int
    duration_ns: int  # average per repetition, as the kernel reports it
    data_out: bytes


SK_BUFF_CTX_SIZE = 192  # sizeof(struct __sk_buff) in the uapi this targets; fields we do not set stay 0
SK_BUFF_IFINDEX_OFF = 40


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, out_size: int | None = None,
                  skb_ifindex: int | None = None) -> TestRunResult:
    """BPF_PROG_TEST_RUN: run a loaded XDP or tc program on a crafted frame in the real kernel.
    skb_ifindex (tc programs): run as if on that interface of the caller's network namespace instead of
    its loopback device."""
    attr = _attr()
    if skb_ifindex is not None:
        ctx = (ctypes.c_ubyte * SK_BUFF_CTX_SIZE)()
        _put(ctx, SK_BUFF_IFINDEX_OFF, ctypes.c_uint32, skb_ifindex)
        _put(attr, 40, ctypes.c_uint32, SK_BUFF_CTX_SIZE)
        _put(attr, 48, ctypes.c_uint64, ctypes.addressof(ctx))
    buf_in = ctypes.create_string_buffer(data, len(data))
    out_len = out_size if out_size is not None else len(data) + 256
    buf_out = ctypes.create_string_buffer(out_len)
    _put(attr, 0, ctypes.c_uint32, prog_fd)
    _put(attr, 8, ctypes.c_uint32, len(data))
    _put(attr, 12, ctypes.c_uint32, out_len)
    _put(attr, 16, ctypes.c_uint64, ctypes.addressof(buf_in))
    _put(attr, 24, ctypes.c_uint64, ctypes.addressof(buf_out))
    _put(attr, 32, ctypes.c_uint32, repeat)
    _bpf(BPF_PROG_TEST_RUN, attr)
    size_out = min(_get(attr, 12, ctypes.c_uint32), out_len)
    return TestRunResult(_get(attr, 4, ctypes.c_uint32), _get(attr, 36, ctypes.c_uint32), buf_out.raw[:size_out])


def _prog_info(prog_fd: int) -> bytes:
    """struct bpf_prog_info of a program (BPF_OBJ_GET_INFO_BY_FD)."""
    info = _attr(256)
    attr = _attr()
    _put(attr, 0, ctypes.c_uint32, prog_fd)
    _put(attr, 4, ctypes.c_uint32, ctypes.sizeof(info))
    _put(attr, 8, ctypes.c_uint64, ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return bytes(info)


def prog_name_by_id(prog_id: int) -> str | None:
    """Name of a loaded program (as the kernel truncated it, 15 chars), or None if it is gone. Raises
    BpfError(EPERM) without CAP_SYS_ADMIN: BPF_PROG_GET_FD_BY_ID needs it even with CAP_BPF."""
    try:
        fd = prog_fd_by_id(prog_id)
    except BpfError as e:
        if e.errno == errno.EPERM:
            raise
        return None
    try:
        # struct bpf_prog_info: char name[16] at offset 64.
        return _prog_info(fd)[64:80].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


def prog_id_by_fd(prog_fd: int) -> int:
    return int.from_bytes(_prog_info(prog_fd)[4:8], "little")


def link_create_xdp(prog_fd: int, ifindex: int, mode_flags: int) -> int:
    """BPF_LINK_CREATE for XDP (kernel >= 5.9): a link fd. The kernel detaches the program when the last
    fd of the link closes, so a SIGKILLed sensor leaves nothing attached; and a link never replaces an
    attached program (EBUSY/EEXIST), nor can netlink replace or remove it."""
    attr = _attr()
    _put(attr, 0, ctypes.c_uint32, prog_fd)
    _put(attr, 4, ctypes.c_uint32, ifindex)
    _put(attr, 8, ctypes.c_uint32, BPF_XDP)
    _put(attr, 12, ctypes.c_uint32, mode_flags)
    return _bpf(BPF_LINK_CREATE, attr)


@dataclass
class LinkInfo:
    link_id: int
    prog_id: int
    ifindex: int  # 0 once the link was detached (BPF_LINK_DETACH, or its interface went away)


def link_info(link_fd: int) -> LinkInfo:
    """struct bpf_link_info {u32 type, id, prog_id; union {struct {u32 ifindex;} xdp; ...}} of a link."""
    info = _attr(64)
    attr = _attr()
    _put(attr, 0, ctypes.c_uint32, link_fd)
    _put(attr, 4, ctypes.c_uint32, ctypes.sizeof(info))
    _put(attr, 8, ctypes.c_uint64, ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return LinkInfo(_get(info, 4, ctypes.c_uint32), _get(info, 8, ctypes.c_uint32), _get(info, 16, ctypes.c_uint32))


def link_detach(link_fd: int) -> None:
    """BPF_LINK_DETACH: detaches the link's program now; the fd stays valid (a defunct link)."""
    attr = _attr()
    _put(attr, 0, ctypes.c_uint32, link_fd)
    _bpf(BPF_LINK_DETACH, attr)


def percpu_value_size(value_size: int) -> int:
    return (value_size + 7) // 8 * 8


def _elem(cmd: int, map_fd: int, key: bytes, value: ctypes.Array | None, flags: int = 0,
          absent_ok: bool = True) -> bool:
    """BPF_MAP_*_ELEM on one key (attr: map_fd, key, value, flags). False when the key is absent and
    absent_ok, so the callers share one place that knows the layout and the ENOENT rule."""
    attr = _attr()
    kbuf = ctypes.create_string_buffer(key, len(key))
    _put(attr, 0, ctypes.c_uint32, map_fd)
    _put(attr, 8, ctypes.c_uint64, ctypes.addressof(kbuf))
    if value is not None:
        _put(attr, 16, ctypes.c_uint64, ctypes.addressof(value))
    _put(attr, 24, ctypes.c_uint64, flags)
    try:
        _bpf(cmd, attr)
    except BpfError as e:
        if absent_ok and e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_lookup_percpu(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """One per-CPU map element: possible_cpus() slots of value_size rounded up to 8 bytes."""
    vbuf = ctypes.create_string_buffer(percpu_value_size(value_size) * possible_cpus())
    return vbuf.raw if _elem(BPF_MAP_LOOKUP_ELEM, map_fd, key, vbuf) else None


def map_lookup_batch(map_fd: int, key_size: int, value_size: int, max_entries: int,
                     percpu: bool = False) -> tuple[bytes, bytes, int]:
    """BPF_MAP_LOOKUP_BATCH over a whole hash map (kernel >= 5.6), always to its end.

    Returns (keys, values, count): raw buffers with `count` packed keys and values (per-CPU values are
    possible_cpus() slots each). The read is not atomic: while the kernel inserts and evicts (an LRU map
    under a flood of new keys), entries evicted behind the cursor and entries inserted ahead of it are both
    read, so `count` can exceed max_entries. The buffers get headroom for that and grow when the kernel
    says a bucket does not fit (ENOSPC); stopping early instead would drop the tail of the map from the
    snapshot (and a later snapshot would then see its whole cumulative count as new).
    """
    vsize = percpu_value_size(value_size) * possible_cpus() if percpu else value_size
    cap = max_entries + max(64, max_entries // 8)
    limit = 4 * max_entries + 1024  # never grow without bound: past this, return what was read
    keys = ctypes.create_string_buffer(key_size * cap)
    values = ctypes.create_string_buffer(vsize * cap)
    token = ctypes.c_uint32(0)
    total = 0
    first = True

    def grow() -> bool:
        nonlocal cap, keys, values
        if cap >= limit:
            return False
        cap = min(cap * 2, limit)
        nk, nv = ctypes.create_string_buffer(key_size * cap), ctypes.create_string_buffer(vsize * cap)
        ctypes.memmove(nk, keys, key_size * total)
        ctypes.memmove(nv, values, vsize * total)
        keys, values = nk, nv
        return True

    while True:
        if cap - total < 16 and not grow():
            break
        attr = _attr()
        _put(attr, 0, ctypes.c_uint64, 0 if first else ctypes.addressof(token))
        _put(attr, 8, ctypes.c_uint64, ctypes.addressof(token))
        _put(attr, 16, ctypes.c_uint64, ctypes.addressof(keys) + key_size * total)
        _put(attr, 24, ctypes.c_uint64, ctypes.addressof(values) + vsize * total)
        _put(attr, 32, ctypes.c_uint32, cap - total)
        _put(attr, 36, ctypes.c_uint32, map_fd)
        try:
            _bpf(BPF_MAP_LOOKUP_BATCH, attr)
        except BpfError as e:
            if e.errno == errno.ENOENT:  # the end of the map: the normal way out
                total += _get(attr, 32, ctypes.c_uint32)
                break
            if e.errno == errno.ENOSPC:
                # The next bucket is bigger than the room left (the kernel read nothing in this call and
                # left the token on that bucket): grow and resume there.
                if grow():
                    continue
                break
            raise
        first = False
        got = _get(attr, 32, ctypes.c_uint32)
        total += got
        if got == 0:
            break
    return keys.raw[: key_size * total], values.raw[: vsize * total], total


def map_lookup(map_fd: int, key: bytes, value_size: int, flags: int = 0) -> bytes | None:
    """One element of a (not per-CPU) map, None when absent. flags=BPF_F_LOCK reads a value that holds
    a bpf_spin_lock under that lock (a consistent copy)."""
    vbuf = ctypes.create_string_buffer(value_size)
    return vbuf.raw if _elem(BPF_MAP_LOOKUP_ELEM, map_fd, key, vbuf, flags) else None


def map_lookup_and_delete(map_fd: int, key: bytes, value_size: int, flags: int = 0) -> bytes | None:
    """Atomically reads and removes one element of a hash map (kernel >= 5.14); None when absent."""
    vbuf = ctypes.create_string_buffer(value_size)
    return vbuf.raw if _elem(BPF_MAP_LOOKUP_AND_DELETE_ELEM, map_fd, key, vbuf, flags) else None


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    """BPF_MAP_UPDATE_ELEM. Raises BpfError (E2BIG: map full, EEXIST/ENOENT with NOEXIST/EXIST)."""
    _elem(BPF_MAP_UPDATE_ELEM, map_fd, key, ctypes.create_string_buffer(value, len(value)), flags, absent_ok=False)


def map_delete(map_fd: int, key: bytes) -> bool:
    """BPF_MAP_DELETE_ELEM; False when the key was not there."""
    return _elem(BPF_MAP_DELETE_ELEM, map_fd, key, None)


def map_keys(map_fd: int, key_size: int, limit: int = 1 << 20) -> list[bytes]:
    """Every key of a hash map (BPF_MAP_GET_NEXT_KEY walk): for small maps such as the limits."""
    keys: list[bytes] = []
    prev: ctypes.Array | None = None
    while len(keys) < limit:
        attr = _attr()
        nbuf = ctypes.create_string_buffer(key_size)
        _put(attr, 0, ctypes.c_uint32, map_fd)
        _put(attr, 8, ctypes.c_uint64, ctypes.addressof(prev) if prev is not None else 0)
        _put(attr, 16, ctypes.c_uint64, ctypes.addressof(nbuf))
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, attr)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                break
            raise
        keys.append(nbuf.raw)
        prev = nbuf
    return keys


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for a loaded program (e.g. one still attached after its loader died). Caller closes."""
    attr = _attr()
    _put(attr, 0, ctypes.c_uint32, prog_id)
    return _bpf(BPF_PROG_GET_FD_BY_ID, attr)


def map_lookup_batch_into(map_fd: int, keys_addr: int, key_size: int, values_addr: int, value_slot: int,
                          max_entries: int, grow: Callable[[int], tuple[int, int, int] | None] | None = None
                          ) -> tuple[int, bool]:
    """BPF_MAP_LOOKUP_BATCH into caller-owned buffers (no allocation, no copy): `max_entries` keys of
    key_size bytes at keys_addr, values of value_slot bytes each (for per-CPU maps:
    percpu_value_size(value_size) * possible_cpus()) at values_addr. Returns (entries read, complete).

    The read is not atomic: under churn (an LRU map flooded with new keys) it can meet more entries than
    the map holds. When the buffers are full before the end of the map (or the next bucket does not fit:
    ENOSPC), `grow(entries read)` must return bigger buffers holding the entries read so far, as
    (keys_addr, values_addr, max_entries), and the read resumes where it stopped. Without `grow`, or
    when it returns None, the read stops there and `complete` is False: a cut-short snapshot, whose
    missing entries a caller must not take for gone. ENOSPC never reaches the poll loop."""
    token = ctypes.c_uint32(0)
    total = 0
    first = True
    while True:
        if total >= max_entries:
            room = grow(total) if grow else None
            if room is None:
                return total, False
            keys_addr, values_addr, max_entries = room
        attr = _attr()
        _put(attr, 0, ctypes.c_uint64, 0 if first else ctypes.addressof(token))
        _put(attr, 8, ctypes.c_uint64, ctypes.addressof(token))
        _put(attr, 16, ctypes.c_uint64, keys_addr + key_size * total)
        _put(attr, 24, ctypes.c_uint64, values_addr + value_slot * total)
        _put(attr, 32, ctypes.c_uint32, max_entries - total)
        _put(attr, 36, ctypes.c_uint32, map_fd)
        try:
            _bpf(BPF_MAP_LOOKUP_BATCH, attr)
        except BpfError as e:
            got = _get(attr, 32, ctypes.c_uint32)
            total += got
            if e.errno == errno.ENOENT:  # the end of the map: the normal way out
                return total, True
            if e.errno == errno.ENOSPC:
                # The next bucket is bigger than the room left; the kernel left the token on it. The first
                # call only moves the token once it read something.
                first = first and got == 0
                room = grow(total) if grow else None
                if room is None:
                    return total, False
                keys_addr, values_addr, max_entries = room
                continue
            raise
        first = False
        got = _get(attr, 32, ctypes.c_uint32)
        total += got
        if got == 0:
            return total, True


def array_lookup_batch_into(map_fd: int, start: int, count: int, keys_addr: int, values_addr: int,
                            value_slot: int) -> int:
    """BPF_MAP_LOOKUP_BATCH over indexes [start, start + count) of an array map (u32 keys) into
    caller-owned buffers. The batch token of an array is the last index read, so a read from `start`
    passes start - 1. Returns how many were read."""
    token_in, token_out = ctypes.c_uint32(max(start - 1, 0)), ctypes.c_uint32(0)
    attr = _attr()
    _put(attr, 0, ctypes.c_uint64, ctypes.addressof(token_in) if start > 0 else 0)
    _put(attr, 8, ctypes.c_uint64, ctypes.addressof(token_out))
    _put(attr, 16, ctypes.c_uint64, keys_addr)
    _put(attr, 24, ctypes.c_uint64, values_addr)
    _put(attr, 32, ctypes.c_uint32, count)
    _put(attr, 36, ctypes.c_uint32, map_fd)
    try:
        _bpf(BPF_MAP_LOOKUP_BATCH, attr)
    except BpfError as e:
        if e.errno != errno.ENOENT:  # ENOENT: the read reached the end of the array
            raise
    return _get(attr, 32, ctypes.c_uint32)


def map_update_batch(map_fd: int, keys: bytes, values: bytes, count: int) -> None:
    """BPF_MAP_UPDATE_BATCH of `count` packed keys and values (per-CPU values: every CPU's slot)."""
    kbuf = ctypes.create_string_buffer(keys, len(keys))
    vbuf = ctypes.create_string_buffer(values, len(values))
    attr = _attr()
    _put(attr, 16, ctypes.c_uint64, ctypes.addressof(kbuf))
    _put(attr, 24, ctypes.c_uint64, ctypes.addressof(vbuf))
    _put(attr, 32, ctypes.c_uint32, count)
    _put(attr, 36, ctypes.c_uint32, map_fd)
    _bpf(BPF_MAP_UPDATE_BATCH, attr)
    done = _get(attr, 32, ctypes.c_uint32)
    if done != count:
        raise BpfError(errno.EIO, f"map update batch stopped after {done} of {count}")


@cache
def membarrier_global_available() -> bool:
    """membarrier(MEMBARRIER_CMD_GLOBAL) works here. It is synchronize_rcu(); nohz_full kernels refuse it."""
    nr = _NR_MEMBARRIER.get(os.uname().machine)
    if nr is None:
        return False
    mask = _libc.syscall(nr, MEMBARRIER_CMD_QUERY, 0, 0)
    return mask > 0 and bool(mask & MEMBARRIER_CMD_GLOBAL)


def membarrier_global() -> None:
    """Waits for an RCU grace period: every BPF program running when this was called (XDP and tc run
    inside RCU read-side sections) has returned when it returns."""
    nr = _NR_MEMBARRIER.get(os.uname().machine)
    if nr is None or _libc.syscall(nr, MEMBARRIER_CMD_GLOBAL, 0, 0) < 0:
        err = ctypes.get_errno() if nr is not None else errno.ENOSYS
        raise BpfError(err, f"membarrier(MEMBARRIER_CMD_GLOBAL): {os.strerror(err)}")
