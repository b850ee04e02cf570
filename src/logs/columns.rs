//! Typed, checked access to the columns of a record batch. Every accessor accepts the
//! Arrow types a Parquet file written by another tool may reasonably carry for that
//! column (Utf8, LargeUtf8 or Utf8View for strings; any integer width for integers;
//! Float32 or Float64 for floats; List, LargeList or FixedSizeList for lists) and turns
//! anything else into a [`LogError`] naming the file and the column.

use std::ops::Range;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, BooleanArray, FixedSizeListArray, LargeListArray, LargeStringArray, ListArray,
    PrimitiveArray, RecordBatch, StringArray, StringViewArray,
};
use arrow_schema::{DataType, TimeUnit};

use super::LogError;

/// Where a value sits: the file and the row within the file (not within the batch).
#[derive(Clone, Copy)]
pub(super) struct Place<'a> {
    pub path: &'a Path,
    /// Row of the batch's first row within the file.
    pub first_row: u64,
}

impl Place<'_> {
    pub fn null(&self, column: &str, row: usize) -> LogError {
        LogError::NullValue {
            path: self.path.to_path_buf(),
            column: column.to_string(),
            row: self.first_row + row as u64,
        }
    }

    pub fn invalid(&self, column: &str, row: usize, problem: String) -> LogError {
        LogError::InvalidValue {
            path: self.path.to_path_buf(),
            column: column.to_string(),
            row: self.first_row + row as u64,
            problem,
        }
    }

    fn wrong_type(&self, column: &str, found: &DataType, expected: &'static str) -> LogError {
        LogError::ColumnType {
            path: self.path.to_path_buf(),
            column: column.to_string(),
            found: found.to_string(),
            expected,
        }
    }

    fn array<'b>(&self, batch: &'b RecordBatch, column: &str) -> Result<&'b dyn Array, LogError> {
        batch
            .column_by_name(column)
            .map(|array| array.as_ref())
            .ok_or_else(|| LogError::MissingColumn {
                path: self.path.to_path_buf(),
                column: column.to_string(),
            })
    }

    /// A required value: null becomes an error naming the column and row.
    pub fn required<T>(&self, column: &str, row: usize, value: Option<T>) -> Result<T, LogError> {
        value.ok_or_else(|| self.null(column, row))
    }
}

/// A string column of any of the three Arrow string layouts.
pub(super) struct StringColumn<'a> {
    name: &'a str,
    values: StringValues<'a>,
}

enum StringValues<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
}

impl<'a> StringValues<'a> {
    fn of(array: &'a dyn Array) -> Option<StringValues<'a>> {
        match array.data_type() {
            DataType::Utf8 => array.as_string_opt::<i32>().map(StringValues::Utf8),
            DataType::LargeUtf8 => array.as_string_opt::<i64>().map(StringValues::LargeUtf8),
            DataType::Utf8View => array.as_string_view_opt().map(StringValues::Utf8View),
            _ => None,
        }
    }

    fn get(&self, index: usize) -> Option<&'a str> {
        let array: &dyn Array = match self {
            StringValues::Utf8(array) => *array,
            StringValues::LargeUtf8(array) => *array,
            StringValues::Utf8View(array) => *array,
        };
        if index >= array.len() || array.is_null(index) {
            return None;
        }
        Some(match self {
            StringValues::Utf8(array) => array.value(index),
            StringValues::LargeUtf8(array) => array.value(index),
            StringValues::Utf8View(array) => array.value(index),
        })
    }
}

impl<'a> StringColumn<'a> {
    pub fn new(
        batch: &'a RecordBatch,
        place: &Place,
        name: &'a str,
    ) -> Result<StringColumn<'a>, LogError> {
        let array = place.array(batch, name)?;
        StringValues::of(array)
            .map(|values| StringColumn { name, values })
            .ok_or_else(|| place.wrong_type(name, array.data_type(), "Utf8"))
    }

    pub fn get(&self, row: usize) -> Option<&'a str> {
        self.values.get(row)
    }

    pub fn required(&self, place: &Place, row: usize) -> Result<&'a str, LogError> {
        place.required(self.name, row, self.get(row))
    }

    pub fn optional_string(&self, row: usize) -> Option<String> {
        self.get(row).map(str::to_string)
    }
}

/// An integer column of any width and signedness; values come out as `i128` so that
/// every source value fits, and the caller narrows with a range check.
pub(super) struct IntegerColumn<'a> {
    name: &'a str,
    values: IntegerValues<'a>,
}

enum IntegerValues<'a> {
    I8(&'a PrimitiveArray<Int8Type>),
    I16(&'a PrimitiveArray<Int16Type>),
    I32(&'a PrimitiveArray<Int32Type>),
    I64(&'a PrimitiveArray<Int64Type>),
    U8(&'a PrimitiveArray<UInt8Type>),
    U16(&'a PrimitiveArray<UInt16Type>),
    U32(&'a PrimitiveArray<UInt32Type>),
    U64(&'a PrimitiveArray<UInt64Type>),
    /// Seconds since the epoch, as a timestamp column written by another tool may carry;
    /// finer units are read as whole seconds (rounded down).
    Seconds(&'a PrimitiveArray<TimestampSecondType>),
    Milliseconds(&'a PrimitiveArray<TimestampMillisecondType>),
    Microseconds(&'a PrimitiveArray<TimestampMicrosecondType>),
    Nanoseconds(&'a PrimitiveArray<TimestampNanosecondType>),
}

impl<'a> IntegerColumn<'a> {
    pub fn new(
        batch: &'a RecordBatch,
        place: &Place,
        name: &'a str,
        expected: &'static str,
    ) -> Result<IntegerColumn<'a>, LogError> {
        let array = place.array(batch, name)?;
        let values = match array.data_type() {
            DataType::Int8 => array.as_primitive_opt().map(IntegerValues::I8),
            DataType::Int16 => array.as_primitive_opt().map(IntegerValues::I16),
            DataType::Int32 => array.as_primitive_opt().map(IntegerValues::I32),
            DataType::Int64 => array.as_primitive_opt().map(IntegerValues::I64),
            DataType::UInt8 => array.as_primitive_opt().map(IntegerValues::U8),
            DataType::UInt16 => array.as_primitive_opt().map(IntegerValues::U16),
            DataType::UInt32 => array.as_primitive_opt().map(IntegerValues::U32),
            DataType::UInt64 => array.as_primitive_opt().map(IntegerValues::U64),
            DataType::Timestamp(TimeUnit::Second, _) => {
                array.as_primitive_opt().map(IntegerValues::Seconds)
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                array.as_primitive_opt().map(IntegerValues::Milliseconds)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                array.as_primitive_opt().map(IntegerValues::Microseconds)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                array.as_primitive_opt().map(IntegerValues::Nanoseconds)
            }
            _ => None,
        };
        values
            .map(|values| IntegerColumn { name, values })
            .ok_or_else(|| place.wrong_type(name, array.data_type(), expected))
    }

    fn get(&self, row: usize) -> Option<i128> {
        fn at<T: arrow_array::ArrowPrimitiveType>(
            array: &PrimitiveArray<T>,
            row: usize,
        ) -> Option<T::Native> {
            (row < array.len() && !array.is_null(row)).then(|| array.value(row))
        }
        match &self.values {
            IntegerValues::I8(array) => at(array, row).map(i128::from),
            IntegerValues::I16(array) => at(array, row).map(i128::from),
            IntegerValues::I32(array) => at(array, row).map(i128::from),
            IntegerValues::I64(array) => at(array, row).map(i128::from),
            IntegerValues::U8(array) => at(array, row).map(i128::from),
            IntegerValues::U16(array) => at(array, row).map(i128::from),
            IntegerValues::U32(array) => at(array, row).map(i128::from),
            IntegerValues::U64(array) => at(array, row).map(i128::from),
            IntegerValues::Seconds(array) => at(array, row).map(i128::from),
            IntegerValues::Milliseconds(array) => {
                at(array, row).map(|value| i128::from(value).div_euclid(1_000))
            }
            IntegerValues::Microseconds(array) => {
                at(array, row).map(|value| i128::from(value).div_euclid(1_000_000))
            }
            IntegerValues::Nanoseconds(array) => {
                at(array, row).map(|value| i128::from(value).div_euclid(1_000_000_000))
            }
        }
    }

    /// The value narrowed to `T`; `None` when null, an error when out of `T`'s range.
    pub fn optional<T: TryFrom<i128>>(
        &self,
        place: &Place,
        row: usize,
    ) -> Result<Option<T>, LogError> {
        match self.get(row) {
            None => Ok(None),
            Some(wide) => T::try_from(wide).map(Some).map_err(|_| {
                place.invalid(
                    self.name,
                    row,
                    format!("{wide} is out of range for {}", std::any::type_name::<T>()),
                )
            }),
        }
    }

    pub fn required<T: TryFrom<i128>>(&self, place: &Place, row: usize) -> Result<T, LogError> {
        let value = self.optional(place, row)?;
        place.required(self.name, row, value)
    }
}

/// A floating-point column, Float32 or Float64, read as `f64`.
pub(super) struct FloatColumn<'a> {
    name: &'a str,
    values: FloatValues<'a>,
}

enum FloatValues<'a> {
    F32(&'a PrimitiveArray<Float32Type>),
    F64(&'a PrimitiveArray<Float64Type>),
}

impl<'a> FloatValues<'a> {
    fn of(array: &'a dyn Array) -> Option<FloatValues<'a>> {
        match array.data_type() {
            DataType::Float32 => array.as_primitive_opt().map(FloatValues::F32),
            DataType::Float64 => array.as_primitive_opt().map(FloatValues::F64),
            _ => None,
        }
    }

    fn get(&self, index: usize) -> Option<f64> {
        match self {
            FloatValues::F32(array) => (index < array.len() && !array.is_null(index))
                .then(|| f64::from(array.value(index))),
            FloatValues::F64(array) => {
                (index < array.len() && !array.is_null(index)).then(|| array.value(index))
            }
        }
    }
}

impl<'a> FloatColumn<'a> {
    pub fn new(
        batch: &'a RecordBatch,
        place: &Place,
        name: &'a str,
    ) -> Result<FloatColumn<'a>, LogError> {
        let array = place.array(batch, name)?;
        FloatValues::of(array)
            .map(|values| FloatColumn { name, values })
            .ok_or_else(|| place.wrong_type(name, array.data_type(), "Float64"))
    }

    pub fn get(&self, row: usize) -> Option<f64> {
        self.values.get(row)
    }

    pub fn required(&self, place: &Place, row: usize) -> Result<f64, LogError> {
        place.required(self.name, row, self.get(row))
    }
}

pub(super) struct BooleanColumn<'a> {
    name: &'a str,
    values: &'a BooleanArray,
}

impl<'a> BooleanColumn<'a> {
    pub fn new(
        batch: &'a RecordBatch,
        place: &Place,
        name: &'a str,
    ) -> Result<BooleanColumn<'a>, LogError> {
        let array = place.array(batch, name)?;
        array
            .as_boolean_opt()
            .map(|values| BooleanColumn { name, values })
            .ok_or_else(|| place.wrong_type(name, array.data_type(), "Boolean"))
    }

    pub fn required(&self, place: &Place, row: usize) -> Result<bool, LogError> {
        let value =
            (row < self.values.len() && !self.values.is_null(row)).then(|| self.values.value(row));
        place.required(self.name, row, value)
    }
}

/// The row ranges of a list column of any of the three list layouts, without its values.
enum ListOffsets<'a> {
    List(&'a ListArray),
    LargeList(&'a LargeListArray),
    FixedSize(&'a FixedSizeListArray),
}

impl<'a> ListOffsets<'a> {
    /// The list layout and its child values, or `None` when the column is not a list.
    fn of(array: &'a dyn Array) -> Option<(ListOffsets<'a>, &'a dyn Array)> {
        match array.data_type() {
            DataType::List(_) => array
                .as_list_opt::<i32>()
                .map(|list| (ListOffsets::List(list), list.values().as_ref())),
            DataType::LargeList(_) => array
                .as_list_opt::<i64>()
                .map(|list| (ListOffsets::LargeList(list), list.values().as_ref())),
            DataType::FixedSizeList(_, _) => array
                .as_fixed_size_list_opt()
                .map(|list| (ListOffsets::FixedSize(list), list.values().as_ref())),
            _ => None,
        }
    }

    /// Positions in the child values of row `row`; `None` when the list is null.
    fn range(&self, row: usize) -> Option<Range<usize>> {
        match self {
            ListOffsets::List(list) => {
                if row >= list.len() || list.is_null(row) {
                    return None;
                }
                let offsets = list.value_offsets();
                let start = usize::try_from(offsets[row]).ok()?;
                let end = usize::try_from(offsets[row + 1]).ok()?;
                Some(start..end)
            }
            ListOffsets::LargeList(list) => {
                if row >= list.len() || list.is_null(row) {
                    return None;
                }
                let offsets = list.value_offsets();
                let start = usize::try_from(offsets[row]).ok()?;
                let end = usize::try_from(offsets[row + 1]).ok()?;
                Some(start..end)
            }
            ListOffsets::FixedSize(list) => {
                if row >= list.len() || list.is_null(row) {
                    return None;
                }
                let start = list.value_offset_at(row);
                let length = usize::try_from(list.value_length()).ok()?;
                Some(start..start + length)
            }
        }
    }
}

/// A column of string lists: `List<Utf8>` and its large and view cousins.
pub(super) struct StringListColumn<'a> {
    name: &'a str,
    offsets: ListOffsets<'a>,
    values: StringValues<'a>,
}

impl<'a> StringListColumn<'a> {
    pub fn new(
        batch: &'a RecordBatch,
        place: &Place,
        name: &'a str,
    ) -> Result<StringListColumn<'a>, LogError> {
        let array = place.array(batch, name)?;
        ListOffsets::of(array)
            .and_then(|(offsets, child)| {
                StringValues::of(child).map(|values| StringListColumn {
                    name,
                    offsets,
                    values,
                })
            })
            .ok_or_else(|| place.wrong_type(name, array.data_type(), "List<Utf8>"))
    }

    /// The list of row `row`; `None` when null, an error when an element is null.
    pub fn optional(&self, place: &Place, row: usize) -> Result<Option<Vec<String>>, LogError> {
        let Some(range) = self.offsets.range(row) else {
            return Ok(None);
        };
        let mut list = Vec::with_capacity(range.len());
        for (position, index) in range.enumerate() {
            let value = self.values.get(index).ok_or_else(|| {
                place.invalid(self.name, row, format!("element {position} is null"))
            })?;
            list.push(value.to_string());
        }
        Ok(Some(list))
    }
}

/// A column of float vectors: `FixedSizeList<Float32, n>`, or `List` / `LargeList` of
/// Float32 or Float64.
pub(super) struct FloatListColumn<'a> {
    name: &'a str,
    offsets: ListOffsets<'a>,
    values: FloatValues<'a>,
}

impl<'a> FloatListColumn<'a> {
    pub fn new(
        batch: &'a RecordBatch,
        place: &Place,
        name: &'a str,
    ) -> Result<FloatListColumn<'a>, LogError> {
        let array = place.array(batch, name)?;
        ListOffsets::of(array)
            .and_then(|(offsets, child)| {
                FloatValues::of(child).map(|values| FloatListColumn {
                    name,
                    offsets,
                    values,
                })
            })
            .ok_or_else(|| {
                place.wrong_type(
                    name,
                    array.data_type(),
                    "FixedSizeList<Float32> or List<Float32>",
                )
            })
    }

    pub fn optional(&self, place: &Place, row: usize) -> Result<Option<Vec<f32>>, LogError> {
        let Some(range) = self.offsets.range(row) else {
            return Ok(None);
        };
        let mut vector = Vec::with_capacity(range.len());
        for (position, index) in range.enumerate() {
            let value = self.values.get(index).ok_or_else(|| {
                place.invalid(self.name, row, format!("element {position} is null"))
            })?;
            // Float64 sources narrow to the f32 the records hold; the precision lost is
            // far below what a content embedding carries.
            vector.push(value as f32);
        }
        Ok(Some(vector))
    }
}
