"""An empty preload is never 'adopted': the library reopens its gate only when its last offloaded
allocation is adopted, so with none the caller must RELOAD (both restore paths fall back to it)."""

import os

import pytest

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.preload import adopt


class _Empty:
    def allocations(self):
        return []


def test_adopting_nothing_is_refused_so_the_caller_reloads():
    with pytest.raises(RestoreprofError, match="holds no GPU memory to adopt") as err:
        adopt(os.getpid(), _Empty())
    assert "RELOAD" in err.value.hint
