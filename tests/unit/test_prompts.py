"""Tests for geomcheck.run.prompts: shipped sets, file loaders, specs, hashing."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from geomcheck.run.prompts import (
    BUILTIN_SETS,
    PromptFileError,
    builtin_prompts,
    load_prompts,
    prompts_hash,
    resolve_prompts,
)


# ---------------------------------------------------------------- builtins


@pytest.mark.parametrize("name", BUILTIN_SETS)
def test_builtin_set_size_unique_nonblank(name: str) -> None:
    prompts = builtin_prompts(name)
    assert len(prompts) >= 128
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    assert all(p and p == p.strip() for p in prompts), "blank/unstripped prompt"
    assert all("\n" not in p for p in prompts)


def test_builtin_sets_are_disjoint_and_plausible() -> None:
    harmful = builtin_prompts("harmful")
    harmless = builtin_prompts("harmless")
    assert not set(harmful) & set(harmless)
    for p in harmful + harmless:
        assert 3 <= len(p.split()) <= 25, p


def test_builtin_sets_are_matched_in_length() -> None:
    """Harmfulness, not length, must be what separates the sets: their mean word counts differ by at most
    0.25 pooled standard deviations (a length-only split of one set separates its means too, issue #24)."""
    harmful, harmless = ([len(p.split()) for p in builtin_prompts(name)] for name in ("harmful", "harmless"))
    pooled_sd = ((np.var(harmful, ddof=1) * (len(harmful) - 1) + np.var(harmless, ddof=1) * (len(harmless) - 1))
                 / (len(harmful) + len(harmless) - 2)) ** 0.5
    gap = abs(np.mean(harmful) - np.mean(harmless)) / pooled_sd
    print(f"built-in sets: {np.mean(harmful):.2f} vs {np.mean(harmless):.2f} words, {gap:.2f} pooled sd apart")
    assert gap <= 0.25, f"the built-in sets' mean lengths differ by {gap:.2f} pooled sd (need ≤ 0.25)"


def test_builtin_returns_fresh_copy() -> None:
    a = builtin_prompts("harmful")
    a.append("mutated")
    assert "mutated" not in builtin_prompts("harmful")


def test_builtin_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as exc:
        builtin_prompts("nonsense")
    msg = str(exc.value)
    assert "nonsense" in msg
    for name in BUILTIN_SETS:
        assert name in msg


# ------------------------------------------------------------------- hash


def test_hash_stable_and_short_hex() -> None:
    h1 = prompts_hash(["a", "b"], ["c"])
    h2 = prompts_hash(["a", "b"], ("c",))
    assert h1 == h2
    assert re.fullmatch(r"[0-9a-f]{16}", h1)
    # pinned so that an accidental change of encoding (which would silently
    # invalidate cached results keyed on this hash) is noticed
    assert h1 == "17b7702e4c44baad"


def test_hash_separator_safe() -> None:
    assert prompts_hash(["ab"], ["c"]) != prompts_hash(["a"], ["bc"])
    assert prompts_hash(["a", "b"]) != prompts_hash(["ab"])
    assert prompts_hash(["a", "b"]) != prompts_hash(["a"], ["b"])
    assert prompts_hash(["a"], []) != prompts_hash(["a"])
    assert prompts_hash(["x"], ["y"]) != prompts_hash(["y"], ["x"])


def test_hash_rejects_bare_string() -> None:
    with pytest.raises(TypeError):
        prompts_hash("abc")


def test_hash_of_builtins_is_deterministic() -> None:
    h = prompts_hash(builtin_prompts("harmful"), builtin_prompts("harmless"))
    assert h == prompts_hash(builtin_prompts("harmful"), builtin_prompts("harmless"))
    assert h != prompts_hash(builtin_prompts("harmless"), builtin_prompts("harmful"))


# ------------------------------------------------------------ happy paths


def test_load_txt(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("  first prompt  \n\n\t\nsecond prompt\r\nthird\n", encoding="utf-8")
    assert load_prompts(f) == ["first prompt", "second prompt", "third"]
    assert load_prompts(str(f)) == ["first prompt", "second prompt", "third"]


def test_load_txt_with_bom_and_unicode(tmp_path: Path) -> None:
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbf" + "caf\u00e9 prompt\nna\u00efve\n".encode("utf-8"))
    assert load_prompts(f) == ["caf\u00e9 prompt", "na\u00efve"]


def test_load_jsonl(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    rows = [{"prompt": "one", "id": 1}, {"prompt": "two"}]
    f.write_text(
        json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n", encoding="utf-8"
    )
    assert load_prompts(f) == ["one", "two"]


def test_load_jsonl_custom_field(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"goal": "g1", "prompt": "x"}\n{"goal": "g2"}\n', encoding="utf-8")
    assert load_prompts(f, field="goal") == ["g1", "g2"]


def test_load_csv(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text(
        'id,prompt\n1,hello there\n\n2,"with, a comma"\n3,"multi\nline"\n',
        encoding="utf-8",
    )
    assert load_prompts(f) == ["hello there", "with, a comma", "multi\nline"]


def test_load_csv_custom_column(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text("goal,target\nDo X,Sure\nDo Y,Sure\n", encoding="utf-8")
    assert load_prompts(f, field="goal") == ["Do X", "Do Y"]


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    f = tmp_path / "P.TXT"
    f.write_text("a\n", encoding="utf-8")
    assert load_prompts(f) == ["a"]


# --------------------------------------------------------------- resolve


def test_resolve_none_uses_default() -> None:
    assert resolve_prompts(None, "harmless") == builtin_prompts("harmless")


def test_resolve_builtin_name() -> None:
    assert resolve_prompts("harmful", "harmless") == builtin_prompts("harmful")


def test_resolve_path(tmp_path: Path) -> None:
    f = tmp_path / "mine.txt"
    f.write_text("mine\n", encoding="utf-8")
    assert resolve_prompts(str(f), "harmful") == ["mine"]


def test_resolve_csv_colon_spec(tmp_path: Path) -> None:
    f = tmp_path / "file.csv"
    f.write_text("prompt,col\nwrong,right\n", encoding="utf-8")
    assert resolve_prompts(f"{f}:col", "harmful") == ["right"]
    assert resolve_prompts(str(f), "harmful") == ["wrong"]


def test_resolve_jsonl_colon_spec(tmp_path: Path) -> None:
    f = tmp_path / "file.jsonl"
    f.write_text('{"prompt": "wrong", "goal": "right"}\n', encoding="utf-8")
    assert resolve_prompts(f"{f}:goal", "harmful") == ["right"]


def test_resolve_colon_spec_missing_column_names_file(tmp_path: Path) -> None:
    f = tmp_path / "file.csv"
    f.write_text("prompt\nx\n", encoding="utf-8")
    with pytest.raises(PromptFileError) as exc:
        resolve_prompts(f"{f}:nope", "harmful")
    msg = str(exc.value)
    assert "file.csv" in msg and "'nope'" in msg and "'prompt'" in msg


def test_resolve_colon_not_split_for_txt(tmp_path: Path) -> None:
    # only .jsonl/.csv take a ':field'; for other specs the colon is part of the path
    with pytest.raises(PromptFileError) as exc:
        resolve_prompts(str(tmp_path / "a.txt:col"), "harmful")
    assert "a.txt:col" in str(exc.value)


def test_resolve_conflicting_fields(tmp_path: Path) -> None:
    f = tmp_path / "file.csv"
    f.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(PromptFileError) as exc:
        resolve_prompts(f"{f}:a", "harmful", field="b")
    assert "'a'" in str(exc.value) and "'b'" in str(exc.value)


def test_resolve_empty_spec() -> None:
    with pytest.raises(PromptFileError) as exc:
        resolve_prompts("  ", "harmful")
    assert "harmful" in str(exc.value)


def test_resolve_unknown_default() -> None:
    with pytest.raises(ValueError) as exc:
        resolve_prompts(None, "nope")
    assert "harmless" in str(exc.value)


# ------------------------------------------------------------ bad inputs


def _raises(path: Path | str, field: str | None = None) -> str:
    with pytest.raises(PromptFileError) as exc:
        load_prompts(path, field)
    assert isinstance(exc.value, ValueError)
    return str(exc.value)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    f = tmp_path / f"empty{suffix}"
    f.write_bytes(b"")
    msg = _raises(f)
    assert f"empty{suffix}" in msg
    assert "contains no prompts" in msg


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_blank_only_file(tmp_path: Path, suffix: str) -> None:
    f = tmp_path / f"blank{suffix}"
    f.write_text("\n   \n\t\n\r\n", encoding="utf-8")
    msg = _raises(f)
    assert f"blank{suffix}" in msg
    assert "contains no prompts" in msg


def test_txt_no_prompts_message_says_one_per_line(tmp_path: Path) -> None:
    f = tmp_path / "blank.txt"
    f.write_text("\n\n", encoding="utf-8")
    assert "one prompt per line" in _raises(f)


def test_csv_header_only(tmp_path: Path) -> None:
    f = tmp_path / "hdr.csv"
    f.write_text("prompt\n", encoding="utf-8")
    msg = _raises(f)
    assert "hdr.csv" in msg and "contains no prompts" in msg


def test_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "nope.txt"
    msg = _raises(f)
    assert "nope.txt" in msg and "does not exist" in msg


def test_directory_path(tmp_path: Path) -> None:
    d = tmp_path / "adir.txt"
    d.mkdir()
    msg = _raises(d)
    assert "adir.txt" in msg and "directory" in msg


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root reads a chmod-000 file anyway, so the permission error is raised by the read itself
    f = tmp_path / "secret.txt"
    f.write_text("a prompt\n", encoding="utf-8")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    msg = _raises(f)
    assert "secret.txt" in msg and "permission" in msg.lower() and "chmod u+r" in msg


def test_latin1_file(tmp_path: Path) -> None:
    f = tmp_path / "latin.txt"
    f.write_bytes("first line\ncaf\u00e9 au lait\n".encode("latin-1"))
    msg = _raises(f)
    assert "latin.txt" in msg
    assert "line 2" in msg
    assert "byte offset 14" in msg
    assert "re-save the file as UTF-8" in msg


def test_latin1_offset_counts_bom(tmp_path: Path) -> None:
    f = tmp_path / "bomlatin.txt"
    f.write_bytes(b"\xef\xbb\xbf" + b"ok\n\xe9\n")
    msg = _raises(f)
    assert "bomlatin.txt" in msg and "line 2" in msg and "byte offset 6" in msg


def test_latin1_jsonl_and_csv(tmp_path: Path) -> None:
    j = tmp_path / "l.jsonl"
    j.write_bytes('{"prompt": "na\u00efve"}\n'.encode("latin-1"))
    c = tmp_path / "l.csv"
    c.write_bytes("prompt\nna\u00efve\n".encode("latin-1"))
    for f in (j, c):
        msg = _raises(f)
        assert f.name in msg and "re-save the file as UTF-8" in msg


def test_malformed_json_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok"}\n\n{"prompt": "oops",\n', encoding="utf-8")
    msg = _raises(f)
    assert "bad.jsonl" in msg and "line 3" in msg and "not valid JSON" in msg


def test_jsonl_not_an_object(tmp_path: Path) -> None:
    f = tmp_path / "arr.jsonl"
    f.write_text('{"prompt": "ok"}\n["a", "b"]\n', encoding="utf-8")
    msg = _raises(f)
    assert "arr.jsonl" in msg and "line 2" in msg and "not an object" in msg


def test_jsonl_missing_field_lists_keys(tmp_path: Path) -> None:
    f = tmp_path / "miss.jsonl"
    f.write_text('{"prompt": "ok"}\n{"goal": "x", "target": "y"}\n', encoding="utf-8")
    msg = _raises(f)
    assert "miss.jsonl" in msg and "line 2" in msg
    assert "'prompt'" in msg and "'goal'" in msg and "'target'" in msg


@pytest.mark.parametrize("value", ['""', '"   "', "3", "null", '["x"]'])
def test_jsonl_field_not_nonempty_string(tmp_path: Path, value: str) -> None:
    f = tmp_path / "typ.jsonl"
    f.write_text('{"prompt": %s, "id": 1}\n' % value, encoding="utf-8")
    msg = _raises(f)
    assert "typ.jsonl" in msg and "line 1" in msg and "non-empty string" in msg
    assert "'id'" in msg


def test_csv_missing_column_lists_columns(tmp_path: Path) -> None:
    f = tmp_path / "cols.csv"
    f.write_text("goal,target\na,b\n", encoding="utf-8")
    msg = _raises(f)
    assert "cols.csv" in msg and "'prompt'" in msg
    assert "'goal'" in msg and "'target'" in msg


def test_csv_empty_cell_names_line(tmp_path: Path) -> None:
    f = tmp_path / "cell.csv"
    f.write_text("id,prompt\n1,fine\n2,\n", encoding="utf-8")
    msg = _raises(f)
    assert "cell.csv" in msg and "line 3" in msg and "empty" in msg


def test_csv_short_row_is_empty_cell(tmp_path: Path) -> None:
    f = tmp_path / "short.csv"
    f.write_text("id,prompt\n1\n", encoding="utf-8")
    msg = _raises(f)
    assert "short.csv" in msg and "line 2" in msg


def test_csv_malformed_quoting(tmp_path: Path) -> None:
    f = tmp_path / "quote.csv"
    f.write_text('prompt\n"abc"def\n', encoding="utf-8")
    msg = _raises(f)
    assert "quote.csv" in msg and "not valid CSV" in msg


@pytest.mark.parametrize("name", ["p.json", "p.yaml", "noext"])
def test_unknown_suffix(tmp_path: Path, name: str) -> None:
    f = tmp_path / name
    f.write_text("a\n", encoding="utf-8")
    msg = _raises(f)
    assert name in msg
    for suffix in (".txt", ".jsonl", ".csv"):
        assert suffix in msg


def test_field_with_txt_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("a\n", encoding="utf-8")
    msg = _raises(f, field="prompt")
    assert "p.txt" in msg and "'prompt'" in msg


def test_pathlike_accepted(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("x\n", encoding="utf-8")

    class P(os.PathLike):
        def __fspath__(self) -> str:
            return str(f)

    assert load_prompts(P()) == ["x"]
