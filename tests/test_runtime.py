import sys

import pytest

from jal.runtime import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_mallopt_is_reachable_and_accepts_the_settings():
    assert keep_freed_memory() is True
