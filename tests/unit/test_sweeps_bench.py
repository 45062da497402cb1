"""`llmpipe bench sweeps` runs and reports what it measured: the floor (every row read),
the indexed sweeps (and the rows they found due) and the budget gauges."""

from pipeline.bench.sweeps import run


def test_the_sweeps_bench_reports_its_floor_and_the_rows_it_swept():
    lines = run(admissions=6_000, window_s=600)
    assert lines[0].startswith("6,000 admissions over a 600 s window (10 requests/s)")
    assert "floor (reading every row, as before the indexes)" in lines[1]
    # 200 s on, the rows first seen before now - 400 s are due: 100 s of 500 s, 1/6 of them
    assert lines[2].endswith("for the 200 rows then due"), lines[2]
    assert "(3 periods)" in lines[3]
