"""One spec per paper table (`table_I.yaml` ... `table_V.yaml`); `load_table` reads them."""

from ablations.registry import TableSpec, list_tables, load_table

__all__ = ["TableSpec", "list_tables", "load_table"]
