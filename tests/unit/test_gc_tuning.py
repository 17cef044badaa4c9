import gc
import threading

from heartbeat_platform.gc_tuning import YOUNG_GENERATION_THRESHOLD, fewer_gc_pauses


def test_threshold_is_raised_while_in_use_and_restored_after() -> None:
    before = gc.get_threshold()
    with fewer_gc_pauses():
        assert gc.get_threshold()[0] >= YOUNG_GENERATION_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
    assert gc.get_threshold() == before


def test_overlapping_users_restore_only_when_the_last_one_leaves() -> None:
    before = gc.get_threshold()
    first, second = fewer_gc_pauses(), fewer_gc_pauses()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first user leaves while the second still runs
    assert gc.get_threshold()[0] >= YOUNG_GENERATION_THRESHOLD
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before


def test_concurrent_threads_leave_the_setting_as_it_was() -> None:
    before = gc.get_threshold()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(200):
            with fewer_gc_pauses():
                pass

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gc.get_threshold() == before


def test_used_as_a_decorator_it_applies_on_each_call() -> None:
    seen = []

    @fewer_gc_pauses()
    def run() -> None:
        seen.append(gc.get_threshold()[0])

    run()
    run()
    assert seen == [max(YOUNG_GENERATION_THRESHOLD, gc.get_threshold()[0])] * 2
