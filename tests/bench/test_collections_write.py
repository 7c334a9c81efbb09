from bench.collections_write import distinct_pngs, main


def test_distinct_uploads_are_distinct():
    pngs = distinct_pngs(300, size=16)
    assert len(set(pngs)) == 300


def test_collections_write_runs_adds_against_embeds():
    report = main(["--seconds", "0.4", "--rounds", "1", "--clients", "1,2", "--images", "2",
                   "--pool", "600"])  # fmt: skip
    assert report["store_alone"]["points_per_s"] > 0
    assert [r["clients"] for r in report["rows"]] == [1, 2]
    for row in report["rows"]:
        assert row["add"]["errors"] == 0 and row["add"]["requests"] > 0
        assert row["embed"]["errors"] == 0 and row["add_vs_embed"] > 0
    assert report["uploads"] >= sum(r["add"]["requests"] for r in report["rows"])
