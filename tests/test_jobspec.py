"""Object metadata → JobSpec: spellings, defaults, ranges and the `invalid_metadata` error."""

from __future__ import annotations

import pytest

from consumer.jobs.metadata import InvalidMetadata, build_job_spec, default_model_name, requested_spec


def spec_of(metadata: dict[str, str], object_name: str = "datasets/alice.zip"):  # type: ignore[no-untyped-def]
    return build_job_spec(requested_spec(metadata, object_name=object_name).fields, preset="tiny")


def test_metadata_sets_model_name_and_epochs() -> None:
    spec = spec_of({"model-name": "bob", "epochs": "12"})
    assert (spec.model_name, spec.epochs) == ("bob", 12)


@pytest.mark.parametrize(
    "key", ["model-name", "model_name", "Model-Name", "MODEL_NAME", "modelName", " model-name "]
)
def test_keys_are_case_insensitive_and_dash_underscore_alike(key: str) -> None:
    assert spec_of({key: "carol"}).model_name == "carol"


def test_rvc_webui_names_are_accepted_as_aliases() -> None:
    spec = spec_of({"total_epoch": "7", "save_every_epoch": "2", "sr": "48k"})
    assert (spec.epochs, spec.save_every, spec.sample_rate) == (7, 2, 48000)


def test_defaults_apply_when_metadata_is_empty() -> None:
    spec = spec_of({}, object_name="datasets/My Voice (take 2).zip")
    assert spec.model_name == "My_Voice_take_2"
    assert spec.epochs == 200
    assert spec.sample_rate == 40000


def test_default_model_name_fits_the_allowed_alphabet_and_length() -> None:
    name = default_model_name("datasets/" + "é" * 10 + "x" * 100 + ".ZIP")
    assert name == "x" * 64


def test_optional_fields_reach_the_spec() -> None:
    spec = spec_of(
        {"sample-rate": "32000", "version": "V1", "f0-method": "PM", "batch-size": "8", "author": "Ada L."}
    )
    assert (spec.sample_rate, spec.version, spec.f0_method, spec.batch_size, spec.author) == (
        32000,
        "v1",
        "pm",
        8,
        "Ada L.",
    )


def test_preset_comes_from_the_service_not_the_metadata() -> None:
    assert spec_of({"preset": "full"}).preset == "tiny"


def test_unknown_keys_are_listed() -> None:
    requested = requested_spec({"epochs": "3", "colour": "blue", "Speaker": "x"}, object_name="a.zip")
    assert requested.unknown_keys == ("Speaker", "colour")


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("epochs", "0", "1 to 2000"),
        ("epochs", "2001", "1 to 2000"),
        ("Epochs", "many", "1 to 2000"),
        ("sample-rate", "44100", "32000, 40000, 48000"),
        ("version", "v3", "v1 or v2"),
        ("f0-method", "yin", "rmvpe"),
        ("batch-size", "0", "1 to 256"),
        ("save-every", "-1", "1 to 2000"),
        ("model-name", "has space", "A-Z a-z 0-9 _ -"),
        ("model-name", "x" * 65, "A-Z a-z 0-9 _ -"),
    ],
)
def test_bad_value_names_the_field_and_the_accepted_range(key: str, value: str, accepted: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        requested_spec({key: value}, object_name="a.zip")
    err = caught.value
    assert err.code == "invalid_metadata"
    assert err.field == key
    assert key in err.message and accepted in err.message
    assert err.as_dict()["retryable"] is False


def test_the_same_field_given_twice_with_different_values_is_refused() -> None:
    with pytest.raises(InvalidMetadata, match="given twice"):
        requested_spec({"model-name": "a", "model_name": "b"}, object_name="a.zip")


def test_the_same_field_given_twice_with_one_value_is_fine() -> None:
    assert requested_spec({"epochs": "5", "EPOCHS": "5"}, object_name="a.zip").fields["epochs"] == 5
