"""Safe zip intake: hostile or broken zips are rejected without a trace; good ones extract to safe ids."""

from __future__ import annotations

import json
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_core.audio_io import probe_and_decode
from rvc_core.errors import BadDataset
from rvc_core.intake import ExtractedDataset, ZipLimits, extract_dataset
from tests.factories_intake import (
    FFMPEG_MISSING,
    FFMPEG_MISSING_REASON,
    RawEntry,
    encode_with_ffmpeg,
    raw_zip,
    voice_samples,
    voice_wav,
    zip_bytes,
)

SAFE_NAME = re.compile(r"f[0-9]{4}\.[a-z0-9]+")
SMALL = ZipLimits(max_total_uncompressed_bytes=20_000, max_entries=5, max_entry_bytes=15_000)


def snapshot(root: Path) -> dict[str, int]:
    """Every path under `root` with its size (-1 for folders)."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}


def upload(tmp_path: Path, data: bytes, name: str = "upload.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def extract(tmp_path: Path, data: bytes, limits: ZipLimits = ZipLimits()) -> ExtractedDataset:  # noqa: B008
    return extract_dataset(upload(tmp_path, data), tmp_path / "work" / "extract", limits)


# --- malformed zips: each is rejected with its own code, and nothing is written anywhere ------------
def _truncated_upload() -> bytes:
    whole = zip_bytes({"a.wav": voice_wav(seed=1), "b.wav": voice_wav(seed=2)})
    return whole[: len(whole) // 2]


def _damaged_central_directory() -> bytes:
    whole = bytearray(zip_bytes({"a.wav": voice_wav()}))
    directory_offset = struct.unpack("<I", whole[-6:-2])[0]
    whole[directory_offset : directory_offset + 4] = b"XXXX"
    return bytes(whole)


def _flipped_bytes_in_compressed_data() -> bytes:
    whole = bytearray(zip_bytes({"a.wav": voice_wav(seconds=0.5)}))
    data_start = 30 + len("a.wav")
    for i in range(data_start + 100, data_start + 140):
        whole[i] ^= 0xFF
    return bytes(whole)


def _second_entry_has_bad_crc() -> bytes:
    # The first file is extracted before the damage shows: it must be removed again.
    return raw_zip(
        [RawEntry("a.wav", voice_wav(seed=1)), RawEntry("b.wav", voice_wav(seed=2), crc=zlib.crc32(b"other"))]
    )


def _lying_size_header() -> bytes:
    bomb = bytes(8 << 20)  # 8 MiB of zeros deflate to a few KiB
    return raw_zip([RawEntry("bomb.wav", bomb, file_size=1000)])


def _highly_compressed_entry() -> bytes:
    return zip_bytes({"silence.wav": bytes(4 << 20)})


def _many_small_highly_compressed_entries() -> bytes:
    return zip_bytes({f"s{i}.wav": bytes(512 << 10) for i in range(8)})


MALFORMED: list[tuple[str, Callable[[], bytes], str, ZipLimits]] = [
    ("empty_file", lambda: b"", "not_a_zip", ZipLimits()),
    ("random_bytes", lambda: np.random.default_rng(0).bytes(4096), "not_a_zip", ZipLimits()),
    ("wav_renamed_to_zip", voice_wav, "not_a_zip", ZipLimits()),
    ("text_file", lambda: b"my recordings are attached\n" * 20, "not_a_zip", ZipLimits()),
    ("rar_archive", lambda: b"Rar!\x1a\x07\x00" + bytes(200), "not_a_zip", ZipLimits()),
    ("truncated_upload", _truncated_upload, "zip_corrupt", ZipLimits()),
    ("damaged_central_directory", _damaged_central_directory, "zip_corrupt", ZipLimits()),
    (
        "bad_crc",
        lambda: raw_zip([RawEntry("a.wav", voice_wav(), deflate=False, crc=1234)]),
        "zip_corrupt",
        ZipLimits(),
    ),
    ("flipped_compressed_bytes", _flipped_bytes_in_compressed_data, "zip_corrupt", ZipLimits()),
    ("crc_error_after_a_good_file", _second_entry_has_bad_crc, "zip_corrupt", ZipLimits()),
    (
        "member_data_cut_short",
        lambda: raw_zip([RawEntry("a.wav", voice_wav(seconds=0.5), keep_compressed_bytes=500)]),
        "zip_corrupt",
        ZipLimits(),
    ),
    (
        "member_shorter_than_declared",
        lambda: raw_zip([RawEntry("a.wav", voice_wav(), deflate=False, file_size=len(voice_wav()) + 10)]),
        "zip_corrupt",
        ZipLimits(),
    ),
    (
        "local_header_name_differs",
        lambda: raw_zip([RawEntry("a.wav", voice_wav(), local_name=b"b.wav")]),
        "zip_corrupt",
        ZipLimits(),
    ),
    (
        "invalid_utf8_name",
        lambda: raw_zip([RawEntry(b"\xff\xfe.wav", voice_wav(), flags=0x800)]),
        "zip_corrupt",
        ZipLimits(),
    ),
    (
        "encrypted_entry",
        lambda: raw_zip([RawEntry("a.wav", voice_wav(), flags=0x1)]),
        "zip_encrypted",
        ZipLimits(),
    ),
    (
        "deflate64_compression",
        lambda: raw_zip([RawEntry("a.wav", voice_wav(), method=9)]),
        "zip_unsupported",
        ZipLimits(),
    ),
    (
        "symlink_entry",
        lambda: raw_zip([RawEntry("voice.wav", b"/etc/passwd", external_attr=0o120777 << 16)]),
        "zip_unsafe",
        ZipLimits(),
    ),
    ("absolute_path", lambda: zip_bytes({"/etc/x.wav": voice_wav()}), "zip_unsafe", ZipLimits()),
    ("parent_path", lambda: raw_zip([RawEntry("../x.wav", voice_wav())]), "zip_unsafe", ZipLimits()),
    (
        "nested_parent_path",
        lambda: raw_zip([RawEntry("a/../../x.wav", voice_wav())]),
        "zip_unsafe",
        ZipLimits(),
    ),
    ("windows_drive_path", lambda: raw_zip([RawEntry("C:\\x.wav", voice_wav())]), "zip_unsafe", ZipLimits()),
    ("backslash_traversal", lambda: raw_zip([RawEntry("..\\x.wav", voice_wav())]), "zip_unsafe", ZipLimits()),
    (
        "unc_path",
        lambda: raw_zip([RawEntry("\\\\server\\share\\x.wav", voice_wav())]),
        "zip_unsafe",
        ZipLimits(),
    ),
    (
        "traversal_in_a_non_audio_entry",
        lambda: raw_zip([RawEntry("a.wav", voice_wav()), RawEntry("../notes.txt", b"hi")]),
        "zip_unsafe",
        ZipLimits(),
    ),
    (
        "total_size_over_limit",
        lambda: zip_bytes(
            {"a.wav": voice_wav(seed=1), "b.wav": voice_wav(seed=2), "c.wav": voice_wav(seed=3)}
        ),
        "zip_bomb",
        ZipLimits(max_total_uncompressed_bytes=15_000),
    ),
    (
        "single_entry_over_limit",
        lambda: zip_bytes({"a.wav": voice_wav(seconds=1.0)}),
        "zip_bomb",
        ZipLimits(max_entry_bytes=10_000),
    ),
    ("too_many_entries", lambda: zip_bytes({f"{i}.wav": voice_wav() for i in range(6)}), "zip_bomb", SMALL),
    ("highly_compressed_entry", _highly_compressed_entry, "zip_bomb", ZipLimits()),
    ("highly_compressed_overall", _many_small_highly_compressed_entries, "zip_bomb", ZipLimits()),
    ("lying_size_header", _lying_size_header, "zip_bomb", ZipLimits()),
    ("empty_zip", lambda: zip_bytes({}), "no_audio", ZipLimits()),
    (
        "only_macos_metadata",
        lambda: zip_bytes({"__MACOSX/._a.wav": b"\0" * 100, ".DS_Store": b"\0" * 50}),
        "no_audio",
        ZipLimits(),
    ),
    (
        "only_text_files",
        lambda: zip_bytes({"readme.txt": b"hi", "notes.md": b"# notes"}),
        "no_audio",
        ZipLimits(),
    ),
    (
        "only_a_nested_zip",
        lambda: zip_bytes({"inner.zip": zip_bytes({"a.wav": voice_wav()})}),
        "no_audio",
        ZipLimits(),
    ),
    ("only_folders", lambda: zip_bytes({"voices/": b"", "voices/take1/": b""}), "no_audio", ZipLimits()),
]


@pytest.mark.parametrize(
    ("build", "code", "limits"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_zip_is_rejected_and_nothing_is_written(
    tmp_path: Path, build: Callable[[], bytes], code: str, limits: ZipLimits
) -> None:
    zip_path = upload(tmp_path, build())
    before = snapshot(tmp_path)

    with pytest.raises(BadDataset) as raised:
        extract_dataset(zip_path, tmp_path / "work" / "extract", limits)

    assert raised.value.code == code, raised.value.message
    assert snapshot(tmp_path) == before


def test_rejection_names_the_offending_entry(tmp_path: Path) -> None:
    with pytest.raises(BadDataset) as raised:
        extract(
            tmp_path,
            raw_zip([RawEntry("good.wav", voice_wav()), RawEntry("sub/../../evil.wav", voice_wav())]),
        )

    assert "sub/../../evil.wav" in raised.value.message


def test_bomb_rejection_states_the_limit(tmp_path: Path) -> None:
    with pytest.raises(BadDataset) as raised:
        extract(tmp_path, zip_bytes({"a.wav": voice_wav(seconds=1.0)}), ZipLimits(max_entry_bytes=12_345))

    assert "12345" in raised.value.message


def test_no_audio_message_lists_what_was_ignored(tmp_path: Path) -> None:
    with pytest.raises(BadDataset) as raised:
        extract(tmp_path, zip_bytes({"readme.txt": b"hi", "__MACOSX/._x.wav": b"x"}))

    assert "readme.txt" in raised.value.message
    assert "__MACOSX/._x.wav" in raised.value.message


def test_understated_size_is_caught_even_when_the_crc_matches_the_declared_prefix(tmp_path: Path) -> None:
    # zipfile alone would stop at the declared size and accept it, since the CRC then matches.
    bomb = bytes(8 << 20)
    entry = RawEntry("bomb.wav", bomb, file_size=1000, crc=zlib.crc32(bomb[:1000]))

    with pytest.raises(BadDataset) as raised:
        extract(tmp_path, raw_zip([entry]))

    assert raised.value.code == "zip_bomb"


def test_existing_destination_keeps_its_files_when_a_zip_fails(tmp_path: Path) -> None:
    dest = tmp_path / "extract"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")

    with pytest.raises(BadDataset):
        extract_dataset(upload(tmp_path, _second_entry_has_bad_crc()), dest)

    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]


# --- good zips ------------------------------------------------------------------------------------
def test_audio_is_extracted_byte_for_byte_under_safe_ids(tmp_path: Path) -> None:
    clips = {"take one.wav": voice_wav(seed=1), "take two.wav": voice_wav(seed=2)}

    result = extract(tmp_path, zip_bytes(clips))

    assert [f.original_name for f in result.files] == ["take one.wav", "take two.wav"]
    for f in result.files:
        assert SAFE_NAME.fullmatch(f.path.name)
        assert f.path.parent == tmp_path / "work" / "extract"
        assert f.path.read_bytes() == clips[f.original_name]
        assert f.size_bytes == len(clips[f.original_name])


def test_odd_file_names_become_safe_ids_and_keep_their_original_names(tmp_path: Path) -> None:
    odd = [
        "my voice (final) v2.wav",
        "ボイス_01.wav",
        "🎤 take.wav",
        'it\'s "quoted".wav',
        "x" * 200 + ".wav",
        "Ünïcödé/sub folder/ça.flac",
        "semi;colon&amp$dollar.wav",
    ]

    result = extract(tmp_path, zip_bytes({name: voice_wav(seed=i) for i, name in enumerate(odd)}))

    assert sorted(f.original_name for f in result.files) == sorted(odd)
    assert all(SAFE_NAME.fullmatch(f.path.name) for f in result.files)
    assert len({f.id for f in result.files}) == len(odd)


def test_names_without_the_utf8_flag_are_read_as_cp437(tmp_path: Path) -> None:
    result = extract(tmp_path, raw_zip([RawEntry(b"caf\x82.wav", voice_wav())]))

    assert result.files[0].original_name == "café.wav"


def test_uppercase_extension_is_lowercased(tmp_path: Path) -> None:
    result = extract(tmp_path, zip_bytes({"TAKE.WAV": voice_wav()}))

    assert result.files[0].path.name == "f0000.wav"


def test_files_are_ordered_by_original_name(tmp_path: Path) -> None:
    names = ["c.wav", "a/z.wav", "b.wav", "a/b.wav"]

    result = extract(tmp_path, zip_bytes({n: voice_wav(seed=i) for i, n in enumerate(names)}))

    assert [f.original_name for f in result.files] == sorted(names)
    assert [f.id for f in result.files] == ["f0000", "f0001", "f0002", "f0003"]


def test_duplicate_names_are_both_kept_under_distinct_ids(tmp_path: Path) -> None:
    result = extract(
        tmp_path, raw_zip([RawEntry("a.wav", voice_wav(seed=1)), RawEntry("a.wav", voice_wav(seed=2))])
    )

    assert [f.original_name for f in result.files] == ["a.wav", "a.wav"]
    assert result.files[0].path.read_bytes() != result.files[1].path.read_bytes()


def test_integer_top_level_folders_become_speaker_ids(tmp_path: Path) -> None:
    entries = {
        "0/a.wav": voice_wav(seed=1),
        "1/deep/er/b.wav": voice_wav(seed=2),
        "3/c.wav": voice_wav(seed=3),
    }

    result = extract(tmp_path, zip_bytes(entries))

    assert {f.original_name: f.speaker_id for f in result.files} == {
        "0/a.wav": 0,
        "1/deep/er/b.wav": 1,
        "3/c.wav": 3,
    }
    assert result.speakers == (0, 1, 3)


def test_backslash_separated_speaker_folders_are_understood(tmp_path: Path) -> None:
    result = extract(
        tmp_path, raw_zip([RawEntry("0\\a.wav", voice_wav(seed=1)), RawEntry("2\\b.wav", voice_wav())])
    )

    assert result.speakers == (0, 2)


def test_a_file_outside_the_integer_folders_makes_everything_speaker_zero(tmp_path: Path) -> None:
    entries = {"0/a.wav": voice_wav(seed=1), "1/b.wav": voice_wav(seed=2), "loose.wav": voice_wav(seed=3)}

    result = extract(tmp_path, zip_bytes(entries))

    assert {f.speaker_id for f in result.files} == {0}
    assert result.speakers == (0,)


def test_a_named_top_folder_with_nested_folders_is_one_speaker(tmp_path: Path) -> None:
    entries = {"alice/day1/a.wav": voice_wav(seed=1), "alice/day2/b.wav": voice_wav(seed=2)}

    result = extract(tmp_path, zip_bytes(entries))

    assert result.speakers == (0,)
    assert len(result.files) == 2


def test_system_hidden_and_non_audio_entries_are_listed_with_reasons(tmp_path: Path) -> None:
    entries = {
        "voice.wav": voice_wav(),
        "__MACOSX/._voice.wav": b"\0" * 80,
        ".DS_Store": b"\0" * 30,
        ".hidden/take.wav": voice_wav(),
        "Thumbs.db": b"\0" * 10,
        "sub/desktop.ini": b"[x]",
        "notes.txt": b"hi",
        "inner.zip": zip_bytes({"a.wav": voice_wav()}),
        "empty.wav": b"",
        "sub/": b"",
    }

    result = extract(tmp_path, zip_bytes(entries))

    reasons = {entry.name: entry.reason for entry in result.ignored}
    assert [f.original_name for f in result.files] == ["voice.wav"]
    assert reasons == {
        "__MACOSX/._voice.wav": "macos resource fork (__MACOSX/)",
        ".DS_Store": "hidden file",
        ".hidden/take.wav": "hidden file",
        "Thumbs.db": "system file (Thumbs.db)",
        "sub/desktop.ini": "system file (desktop.ini)",
        "notes.txt": "not an audio file (.txt)",
        "inner.zip": "not an audio file (.zip)",
        "empty.wav": "empty file (0 bytes)",
        "sub/": "directory",
    }


def test_dot_slash_prefixed_names_are_not_treated_as_hidden(tmp_path: Path) -> None:
    result = extract(tmp_path, raw_zip([RawEntry("./take1.wav", voice_wav())]))

    assert [f.original_name for f in result.files] == ["./take1.wav"]


def test_small_silent_file_is_not_mistaken_for_a_bomb(tmp_path: Path) -> None:
    silence = np.zeros(44100 * 5, dtype=np.float32)  # 5 s, ~430 KiB, compresses ~1000x

    result = extract(tmp_path, zip_bytes({"silence.wav": _wav_of(silence, 44100)}))

    assert len(result.files) == 1


def _silent_wav(seconds: float, rate: int = 44100, fmt: str = "WAV") -> bytes:
    return _wav_of(np.zeros(int(rate * seconds), dtype=np.float32), rate, "PCM_16", fmt)


@pytest.mark.parametrize("fmt", ["WAV", "AIFF"])
def test_long_silent_recording_is_not_mistaken_for_a_bomb(tmp_path: Path, fmt: str) -> None:
    silence = _silent_wav(60.0, fmt=fmt)  # 5.3 MB that deflate ~1000x: the ratio alone says "bomb"
    data = zip_bytes({f"silence.{fmt.lower()}": silence})
    assert len(silence) / len(data) > ZipLimits().max_ratio

    result = extract(tmp_path, data)

    assert [f.size_bytes for f in result.files] == [len(silence)]


def test_many_short_silent_recordings_are_not_a_bomb_overall(tmp_path: Path) -> None:
    result = extract(tmp_path, zip_bytes({f"s{i}.wav": _silent_wav(6.0) for i in range(8)}))

    assert len(result.files) == 8


def test_silent_dataset_is_rejected_as_too_little_audio_not_as_a_bomb(tmp_path: Path) -> None:
    from rvc_core.assets import AssetStore
    from rvc_core.config import PrepareConfig
    from rvc_core.prepare import run_prepare

    zip_path = upload(tmp_path, zip_bytes({"silence.wav": _silent_wav(60.0)}))

    with pytest.raises(BadDataset) as raised:
        run_prepare(
            zip_path, tmp_path / "work", PrepareConfig(f0_method="pm"), assets=AssetStore(None), workers=1
        )

    assert raised.value.code == "too_little_audio", raised.value.message


def test_audio_header_does_not_exempt_a_bomb_beyond_the_exemption_size(tmp_path: Path) -> None:
    silence = _silent_wav(60.0)

    with pytest.raises(BadDataset) as raised:
        extract(
            tmp_path, zip_bytes({"silence.wav": silence}), ZipLimits(ratio_exempt_max_bytes=len(silence) - 1)
        )

    assert raised.value.code == "zip_bomb"


def test_audio_header_that_misstates_the_entry_size_does_not_exempt_it(tmp_path: Path) -> None:
    zeros = bytes(4 << 20)
    forged = b"RIFF" + struct.pack("<I", 36) + b"WAVE" + zeros  # claims 44 bytes, holds 4 MiB

    with pytest.raises(BadDataset) as raised:
        extract(tmp_path, zip_bytes({"bomb.wav": forged}))

    assert raised.value.code == "zip_bomb"


def test_header_matching_bomb_is_still_bound_by_the_absolute_limits(tmp_path: Path) -> None:
    silence = _silent_wav(60.0)

    with pytest.raises(BadDataset) as raised:
        extract(tmp_path, zip_bytes({"silence.wav": silence}), ZipLimits(max_entry_bytes=len(silence) - 1))

    assert raised.value.code == "zip_bomb"


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_other_standard_compression_methods_extract(tmp_path: Path, compression: int) -> None:
    clip = voice_wav()

    result = extract(tmp_path, zip_bytes({"a.wav": clip}, compression=compression))

    assert result.files[0].path.read_bytes() == clip


def test_missing_destination_parents_are_created(tmp_path: Path) -> None:
    dest = tmp_path / "deep" / "er" / "extract"

    result = extract_dataset(upload(tmp_path, zip_bytes({"a.wav": voice_wav()})), dest)

    assert result.files[0].path.parent == dest


def test_listing_round_trips_through_json(tmp_path: Path) -> None:
    entries = {"0/a.wav": voice_wav(seed=1), "1/b.wav": voice_wav(seed=2), "notes.txt": b"hi"}
    result = extract(tmp_path, zip_bytes(entries))

    reloaded = ExtractedDataset.from_json(json.loads(json.dumps(result.to_json())))

    assert reloaded == result


def test_listing_with_relative_paths_follows_a_moved_work_dir(tmp_path: Path) -> None:
    result = extract(tmp_path, zip_bytes({"a.wav": voice_wav()}))
    listing = json.loads(json.dumps(result.to_json(relative_to=tmp_path / "work")))

    reloaded = ExtractedDataset.from_json(listing, base=tmp_path / "moved")

    assert reloaded.files[0].path == tmp_path / "moved" / "extract" / "f0000.wav"


# --- every accepted format decodes after extraction ----------------------------------------------
def _wav_of(samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


SECONDS = 0.6
LOSSLESS_CLIPS = {  # name: (sample rate Hz, channels, soundfile format, subtype)
    "pcm16_8k.wav": (8000, 1, "WAV", "PCM_16"),
    "pcm24_stereo_48k.wav": (48000, 2, "WAV", "PCM_24"),
    "float_96k.wav": (96000, 1, "WAV", "FLOAT"),
    "flac_22k.flac": (22050, 1, "FLAC", "PCM_16"),
    "flac_stereo_44k.flac": (44100, 2, "FLAC", "PCM_24"),
    "vorbis_32k.ogg": (32000, 1, "OGG", "VORBIS"),
}
LOSSY_CLIPS = {  # name: (sample rate Hz, channels, ffmpeg codec options)
    "mp3_stereo_44k.mp3": (44100, 2, ["-c:a", "libmp3lame", "-b:a", "128k"]),
    "mp3_16k.mp3": (16000, 1, ["-c:a", "libmp3lame"]),
    "aac_48k.m4a": (48000, 1, ["-c:a", "aac", "-b:a", "96k"]),
    "aac_stereo_96k.m4a": (96000, 2, ["-c:a", "aac"]),
}


def _multi_format_entries(tmp_path: Path) -> dict[str, bytes]:
    entries = {
        name: _wav_of(voice_samples(SECONDS, rate, channels), rate, subtype, fmt)
        for name, (rate, channels, fmt, subtype) in LOSSLESS_CLIPS.items()
    }
    for name, (rate, channels, codec) in LOSSY_CLIPS.items():
        source = tmp_path / f"{name}.source.wav"
        source.write_bytes(_wav_of(voice_samples(SECONDS, rate, channels), rate, "FLOAT"))
        entries[name] = encode_with_ffmpeg(source, tmp_path / name, codec).read_bytes()
    return entries


@pytest.mark.skipif(FFMPEG_MISSING, reason=FFMPEG_MISSING_REASON)
def test_every_format_in_a_zip_decodes_at_its_own_rate_and_channels(tmp_path: Path) -> None:
    expected = {
        name: (rate, channels) for name, (rate, channels, *_) in {**LOSSLESS_CLIPS, **LOSSY_CLIPS}.items()
    }
    made = tmp_path / "made"
    made.mkdir()

    result = extract(tmp_path, zip_bytes(_multi_format_entries(made)))

    assert sorted(f.original_name for f in result.files) == sorted(expected)
    for f in result.files:
        audio = probe_and_decode(f.path)
        assert (audio.sample_rate, audio.channels) == expected[f.original_name], f.original_name
        assert audio.seconds == pytest.approx(SECONDS, abs=0.06), f.original_name
