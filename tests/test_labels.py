import numpy as np
import pytest

from cxrdist.labels import BOX_CLASSES, LABELS, LabelError, format_finding_labels, normalize_label, parse_finding_labels


def test_order_matches_methods_md():
    assert LABELS[:3] == ("Atelectasis", "Cardiomegaly", "Effusion")
    assert LABELS[-1] == "Hernia" and len(LABELS) == 14
    assert LABELS[:8] == BOX_CLASSES and BOX_CLASSES[-1] == "Pneumothorax"


def test_parse_and_format():
    v = parse_finding_labels("Cardiomegaly|Emphysema")
    assert v.dtype == np.uint8 and v.tolist() == [0, 1] + [0] * 8 + [1, 0, 0, 0]
    assert format_finding_labels(v) == "Cardiomegaly|Emphysema"
    assert parse_finding_labels("No Finding").sum() == 0
    assert format_finding_labels(np.zeros(14)) == "No Finding"


def test_infiltrate_alias():
    assert normalize_label("Infiltrate") == "Infiltration"
    assert parse_finding_labels("Infiltrate")[3] == 1


@pytest.mark.parametrize("text", ["Cardiomegally", "No Finding|Mass", "", "Mass||Nodule"])
def test_bad_labels_name_file_row_label(text):
    with pytest.raises(LabelError, match=r"x\.csv: row 7"):
        parse_finding_labels(text, source="x.csv", row=7)
