"""berth_types: the model types' conversions on the Python side — tensors from
nested lists and from base64 raw bytes, DataFrames from records and split,
list[T], numpy scalars as outputs, and refusals that say what was expected.
(End to end through a real gateway: test/contracts-types.test.ts.)"""

import base64
import unittest

import numpy as np
import pandas as pd

import berth_types as bt


def b64(arr) -> dict:
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "data": base64.b64encode(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).decode()}


class ParseTest(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(bt.parse("ndarray[float32, -1, 3]"), ("ndarray", "float32", (-1, 3)))
        self.assertEqual(bt.parse("ndarray"), ("ndarray", None, None))
        self.assertEqual(bt.parse("ndarray[any,2]"), ("ndarray", None, (2,)))
        self.assertEqual(bt.parse("list[list[int]]"), ("list", ("list", ("scalar", "int"))))
        self.assertEqual(bt.parse("dataframe"), ("dataframe",))
        for bad in ("ndarray[float33]", "tensor", "int[3]", "list[foo]"):
            with self.assertRaises(bt.TypeSyntax, msg=bad):
                bt.parse(bad)


class TensorTest(unittest.TestCase):
    t = bt.parse("ndarray[float32,-1,3]")

    def test_nested_lists_and_base64_give_the_same_array(self):
        a = bt.convert_input(self.t, [[1, 2, 3], [4, 5, 6]])
        self.assertEqual((a.dtype, a.shape), (np.float32, (2, 3)))
        src = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
        b = bt.convert_input(self.t, b64(src))
        np.testing.assert_array_equal(a, b)
        b[0, 0] = 9  # writeable: the cell may change its input in place
        self.assertEqual(b[0, 0], 9)

    def test_refusals_say_what_was_expected(self):
        cases = [
            ([[1, 2], [3, 4]], "shape [-1,3], got shape [2,2]"),
            ([[1, 2, 3], [4, 5]], "regular"),
            ("x", "must hold numbers"),
            (b64(np.zeros((1, 3), dtype=np.float64)), "dtype float32, got float64"),
            ({"dtype": "float32", "shape": [1, 3], "data": "AAAA"}, "12 bytes"),
            ({"dtype": "float32", "shape": [1, 3]}, "nested arrays or"),
        ]
        for value, text, t in [(v, x, self.t) for v, x in cases] + [
            ([1.5], "must hold int8 values, got float64", bt.parse("ndarray[int8]")),
            ([300], "out of the range of uint8", bt.parse("ndarray[uint8]")),
            ([True], "must hold float32 values, got bool", bt.parse("ndarray[float32]")),
        ]:
            with self.assertRaises(bt.Invalid, msg=value) as cm:
                bt.convert_input(t, value)
            self.assertIn(text, cm.exception.args[0])

    def test_outputs_in_both_formats_and_casts(self):
        arr = np.array([[0.5, 1.5, 2.5]], dtype=np.float64)
        self.assertEqual(bt.convert_output(self.t, arr), [[0.5, 1.5, 2.5]])  # float64 → float32 (same kind)
        enc = bt.convert_output(self.t, arr, "base64")
        self.assertEqual((enc["dtype"], enc["shape"]), ("float32", [1, 3]))
        back = np.frombuffer(base64.b64decode(enc["data"]), dtype="<f4").reshape(enc["shape"])
        np.testing.assert_array_equal(back, arr.astype(np.float32))
        with self.assertRaisesRegex(bt.Invalid, r"shape \[-1,3\], got shape \[3\]"):
            bt.convert_output(self.t, np.zeros(3))
        with self.assertRaisesRegex(bt.Invalid, "an array of int8, got float64"):
            bt.convert_output(bt.parse("ndarray[int8]"), np.zeros(3))
        with self.assertRaisesRegex(bt.Invalid, "numpy array, got str"):
            bt.convert_output(self.t, "nope")


class FrameListScalarTest(unittest.TestCase):
    def test_dataframe_records_and_split(self):
        t = bt.parse("dataframe")
        a = bt.convert_input(t, [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}])
        b = bt.convert_input(t, {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]})
        pd.testing.assert_frame_equal(a, b)
        self.assertEqual(bt.convert_output(t, a), [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}])
        with self.assertRaisesRegex(bt.Invalid, "records are row objects"):
            bt.convert_input(t, [1, 2])
        with self.assertRaisesRegex(bt.Invalid, "DataFrame, got dict"):
            bt.convert_output(t, {})

    def test_list_of_t(self):
        t = bt.parse("list[ndarray[int64,2]]")
        out = bt.convert_input(t, [[1, 2], [3, 4]])
        self.assertEqual([a.tolist() for a in out], [[1, 2], [3, 4]])
        with self.assertRaisesRegex(bt.Invalid, r"at \[1\] must have shape \[2\]"):
            bt.convert_input(t, [[1, 2], [3]])
        self.assertEqual(bt.convert_output(bt.parse("list[float]"), [np.float32(0.5), 1]), [0.5, 1.0])

    def test_numpy_scalars_are_plain_outputs(self):
        self.assertEqual(bt.convert_output(bt.parse("float"), np.float32(2.5)), 2.5)
        self.assertEqual(bt.convert_output(bt.parse("int"), np.int64(7)), 7)
        self.assertIs(bt.convert_output(bt.parse("bool"), np.bool_(True)), True)


if __name__ == "__main__":
    unittest.main()
