"""restoreprof.system.gpus over a stand-in NVML: the fields every reader relies on, and an
empty list (not an error) where NVML is missing or fails."""

import sys
import types

from restoreprof.system.gpus import nvml_gpus


class _NVMLError(Exception):
    pass


def _nvml(count=1, persistence_fails=False, init_fails=False):
    m = types.SimpleNamespace(NVMLError=_NVMLError)
    m.nvmlInit = lambda: (_ for _ in ()).throw(_NVMLError("no driver")) if init_fails else None
    m.nvmlShutdown = lambda: None
    m.nvmlSystemGetDriverVersion = lambda: b"580.159.04"
    m.nvmlDeviceGetCount = lambda: count
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 << 30, used=1 << 30)
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    m.nvmlDeviceGetUUID = lambda h: f"GPU-{h:08d}"
    m.nvmlDeviceGetCurrPcieLinkGeneration = lambda h: 5
    m.nvmlDeviceGetCurrPcieLinkWidth = lambda h: 16
    m.nvmlDeviceGetMaxPcieLinkGeneration = lambda h: 5
    m.nvmlDeviceGetMaxPcieLinkWidth = lambda h: 16

    def persistence(h):
        if persistence_fails:
            raise _NVMLError("not supported")
        return 1

    m.nvmlDeviceGetPersistenceMode = persistence
    return m


def test_fields(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _nvml(count=2))
    gpus = nvml_gpus()
    assert [g["uuid"] for g in gpus] == ["GPU-00000000", "GPU-00000001"]
    assert gpus[1] == {
        "index": 1, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-00000001", "pcie_gen": 5,
        "pcie_width": 16, "pcie_gen_max": 5, "pcie_width_max": 16, "persistence": True,
        "memory_total_bytes": 80 << 30, "memory_used_bytes": 1 << 30,
        "driver_version": "580.159.04"}


def test_unsupported_query_is_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _nvml(persistence_fails=True))
    assert nvml_gpus()[0]["persistence"] is None


def test_no_driver_is_an_empty_list(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _nvml(init_fails=True))
    assert nvml_gpus() == []


def test_gpu_pair_uuid_is_built_from_bytes():
    """cuda-python's CUuuid.bytes is read-only: the pair must still carry the UUID's bytes."""
    from restoreprof.cuda import driver

    raw = bytes(range(16))
    pair = driver.bindings().CUcheckpointGpuPair()
    pair.oldUuid = driver._cu_uuid(raw)
    assert bytes(pair.oldUuid.bytes) == raw


def test_gpu_map_is_completed_to_one_to_one(monkeypatch):
    from restoreprof.checkpoint import gpu
    from restoreprof.cuda import driver

    machine = [{"index": 0, "name": "H100", "uuid": "GPU-00000000-0000-0000-0000-000000000000"},
               {"index": 1, "name": "H100", "uuid": "GPU-11111111-1111-1111-1111-111111111111"}]
    monkeypatch.setattr(gpu, "gpu_records", lambda: machine)
    pairs = gpu.gpu_pairs(machine, {machine[0]["uuid"]: "1"})
    as_uuids = {o: n for o, n in pairs}
    zero, one = (driver.uuid_to_bytes(g["uuid"]) for g in machine)
    assert as_uuids == {zero: one, one: zero}  # the named move, and GPU 1 swapped into the gap
    import pytest

    from restoreprof.errors import RestoreprofError
    with pytest.raises(RestoreprofError, match="two GPUs to one"):
        gpu.gpu_pairs(machine, {"0": "1", "1": "1"})
