"""The report's "Model update on the wire" values, from metrics rows alone (no run needed)."""

from __future__ import annotations

from fedmodel.report.coding import POST_PROCESSING, UPDATE_CODING, coding_values


def test_one_value_per_coding_with_its_bytes_and_no_privacy_cost():
    rows = [
        (1, {"status": "ok", "compression": "int8", "bytes_sent": 1000}),
        (2, {"status": "ok", "compression": "int8", "bytes_sent": 1200}),
        (3, {"status": "ok", "compression": "none", "bytes_sent": 4000}),
        (4, {"status": "refused"}),  # nothing left the site
    ]
    int8, plain = coding_values(rows)
    assert int8.what == plain.what == UPDATE_CODING and int8.protection == POST_PROCESSING
    assert int8.rounds == [1, 2] and "2,200 bytes in 2 replies" in int8.detail
    assert "costs no privacy" in int8.detail and "int8 stochastic quantisation" in int8.detail
    assert plain.rounds == [3] and "plain float32" in plain.detail


def test_secure_aggregation_rows_say_what_travelled_instead():
    (value,) = coding_values([(1, {"status": "ok", "compression": "int4, decoded at the site"})])
    assert "masked by SecAgg+" in value.detail and "bytes not recorded" in value.detail
