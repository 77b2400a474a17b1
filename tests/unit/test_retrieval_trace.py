"""The retrieval trace's bookkeeping (benchmarks/retrieval_trace.py) on hand-built episodes."""

from benchmarks.retrieval_trace import missed_own_success, solved_before, trace


def _ep(task, epoch, won, seed=0, shown=None, wrote=None):
    return {"task_id": task, "epoch": epoch, "seed": seed, "won": won,
            "retrieved_ids": [shown] if shown else [], "written_memory_id": wrote}


def test_solved_before_splits_later_epochs_by_an_earlier_win_of_the_same_seed():
    eps = [_ep("a", 0, True), _ep("a", 1, True), _ep("a", 2, False),   # a: solved in epoch 0
           _ep("b", 0, False), _ep("b", 1, True), _ep("b", 2, True),   # b: first solved in epoch 1
           _ep("a", 0, False, seed=1), _ep("a", 1, False, seed=1)]     # seed 1's a: never solved
    got = solved_before(eps)
    assert got["solved_before"] == {"episodes": 3, "won": 2}           # a@1, a@2, b@2
    assert got["never_solved_before"] == {"episodes": 2, "won": 1}     # b@1 (won), seed-1 a@1


def test_trace_names_what_was_shown():
    eps = [_ep("a", 0, True, wrote="m1"), _ep("b", 0, False, wrote="m2"),
           _ep("a", 1, True, shown="m1"), _ep("b", 1, False, shown="m1"), _ep("b", 2, False, shown="m2"),
           _ep("a", 2, False)]
    got = trace(eps)
    assert got["shown"] == {"nothing": {"episodes": 1, "success": 0.0},
                            "other success": {"episodes": 1, "success": 0.0},
                            "own failure": {"episodes": 1, "success": 0.0},
                            "own success": {"episodes": 1, "success": 1.0}}
    # a had a success memory in epochs 1 and 2, with 0 own failures before them: retrieved once of twice
    assert got["own_success_available"] == {0: {"episodes": 2, "picked_own_success": 1, "won": 1}}


def test_missed_own_success_names_who_failed_with_the_memory_first():
    eps = [_ep("a", 0, True, wrote="ma"), _ep("c", 0, True, wrote="mc"), _ep("d", 0, True, wrote="md"),
           _ep("b", 0, False, shown="ma"),              # another task failed with a's success
           _ep("c", 1, False, shown="mc"),              # c's own episode failed with c's success
           _ep("a", 1, False), _ep("c", 2, False), _ep("d", 1, False),
           _ep("a", 2, True, shown="ma")]               # shown: not a miss
    assert missed_own_success(eps) == {"other_tasks_failed_with_it": 1, "own_task_failed_with_it": 1,
                                       "never_failed_in_use": 1}
