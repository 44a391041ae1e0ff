"""`bench.value`: the value-scoring bench on the real model."""

from __future__ import annotations


def test_value_scoring_bench_smoke(default_model_dir, tmp_path):
    """bench.value runs end to end on the real model: both shared modes agree with full scoring and
    compute fewer decoder positions, packing fewest."""
    import bench.value as bv

    args = bv.parse_args(["--problems", "1", "--expansions", "2", "--k", "2", "--repeats", "1", "--threads", "1",
                          "--dtypes", "float32", "--out", str(tmp_path / "v.json")])
    result = bv.main(args)
    modes = {r["mode"]: r for r in result["rows"]}
    assert set(modes) == {"full", "shared_padded", "shared"} and result["states_per_problem"] == 8
    assert modes["shared"]["max_abs_diff_vs_full"] < 1e-4 and modes["shared_padded"]["max_abs_diff_vs_full"] < 1e-4
    assert modes["full"]["speedup_vs_full"] == 1.0
    assert modes["shared"]["positions"] < modes["shared_padded"]["positions"] < modes["full"]["positions"]
    assert "| float32 | 1 | shared |" in bv.table(result)
