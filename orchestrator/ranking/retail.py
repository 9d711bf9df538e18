"""Purchases from a file shaped like the UCI Online Retail dataset (one row per invoice line).

Columns: InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice,
CustomerID, Country. Each customer's attributes (Country, when the file has it) are
their most common value over their lines (`Dataset.customers`). Cleaning follows the
dataset's README: only lines with a customer, not cancellations (`C...`) or
adjustments (`A...`), positive quantity and price, and product codes (a StockCode
starting with a digit).
"""

from __future__ import annotations

import csv
import gzip
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

REQUIRED = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
            "CustomerID")  # fmt: skip
CUSTOMER_COLUMNS = ("Country",)  # read per customer when present


class DatasetError(Exception):
    """The file is not shaped like the dataset; the message says where."""


@dataclass(frozen=True, slots=True)
class Purchase:
    user: str
    item: str
    at: datetime
    quantity: int = 1  # units on the line (stored events without one count as 1)


@dataclass(frozen=True)
class Item:
    id: str
    name: str
    price: float


@dataclass(frozen=True)
class Dataset:
    purchases: list[Purchase]
    items: dict[str, Item]
    rows: int
    kept: int
    # customer -> attribute -> their most common value, e.g. {"Country": "France"}
    customers: dict[str, dict[str, str]] = field(default_factory=dict)


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_retail(path: Path) -> Dataset:
    """The clean purchases of a file, and its items (most common name, median price)."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    purchases: list[Purchase] = []
    names: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    attributes: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    rows = 0
    with _open(path) as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
        described = [c for c in CUSTOMER_COLUMNS if c in (reader.fieldnames or [])]
        for line, row in enumerate(reader, start=2):
            rows += 1
            code = row["StockCode"].strip()
            customer = row["CustomerID"].strip()
            invoice = row["InvoiceNo"].strip()
            try:
                quantity = int(row["Quantity"])
                price = float(row["UnitPrice"])
                at = datetime.fromisoformat(row["InvoiceDate"])
            except ValueError as exc:
                raise DatasetError(f"{path}:{line}: {exc}") from None
            if not code[:1].isdigit() or quantity <= 0 or price <= 0:
                continue
            if row["Description"].strip():
                names[code][row["Description"].strip()] += 1
            prices[code].append(price)
            if customer and not invoice.startswith(("C", "A")):
                user = customer.removesuffix(".0")
                purchases.append(Purchase(user, code, at, quantity))
                for column in described:
                    if value := (row[column] or "").strip():
                        attributes[user][column][value] += 1
    items = {
        code: Item(
            code,
            names[code].most_common(1)[0][0] if names[code] else code,
            statistics.median(prices[code]),
        )
        for code in prices
    }
    customers = {
        user: {column: counts.most_common(1)[0][0] for column, counts in found.items()}
        for user, found in attributes.items()
    }
    return Dataset(purchases, items, rows, len(purchases), customers)
