"""Hard time bounds (tasks/bounded.py): on the main thread (SIGALRM) and off it (helper process)."""

import threading
import time

import pytest

from transformer_squared.tasks.bounded import CallTimeout, call_with_timeout
from transformer_squared.tasks.scoring import math_equal, verify_math


def test_main_thread_call_is_interrupted():
    start = time.perf_counter()
    with pytest.raises(CallTimeout):
        call_with_timeout(time.sleep, (5,), 0.3)
    assert time.perf_counter() - start < 2


def test_main_thread_result_and_exceptions_pass_through():
    assert call_with_timeout(verify_math, ("\\frac{1}{2}", "0.5"), 60) is True  # 60: the first call imports math-verify
    with pytest.raises(ZeroDivisionError):
        call_with_timeout(divmod, (1, 0), 5)


def _in_thread(fn):
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(120)
    return box


@pytest.mark.slow  # kills the helper process and starts a new one
def test_off_main_thread_uses_a_helper_process_that_can_be_killed():
    box = _in_thread(lambda: call_with_timeout(time.sleep, (30,), 0.5))
    assert isinstance(box.get("error"), CallTimeout)
    # the helper restarts after being killed, and answers real work
    box = _in_thread(lambda: call_with_timeout(verify_math, ("2\\sqrt{3}", "\\sqrt{12}"), 30))
    assert box == {"value": True}


@pytest.mark.slow  # waits for the math-scoring helper process: ~1-2 s on 2 shared cores
def test_math_equal_works_off_main_thread():
    box = _in_thread(lambda: (math_equal("(x+1)^2", "x^2+2x+1"), math_equal("x^2", "x^3")))
    assert box == {"value": (True, False)}


@pytest.mark.slow  # runs out a 1 s budget
def test_math_equal_shares_one_budget_across_elements():
    hard = "(x+y+1)^{60}"
    math_equal("x", "y")  # starts the helper process, whose imports are not part of any comparison's budget
    start = time.perf_counter()
    assert not math_equal(f"{hard}, {hard}, {hard}", "(x+y+2)^{60}, (x+y+3)^{60}, (x+y+4)^{60}", timeout=1.0)
    assert time.perf_counter() - start < 3.0
    box = _in_thread(lambda: (math_equal("x", "y"), time.perf_counter(),
                              math_equal(hard, "(x+y+2)^{60}", timeout=1.0), time.perf_counter()))
    _, t0, equal, t1 = box["value"]
    assert not equal and t1 - t0 < 3.0
