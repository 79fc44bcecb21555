from __future__ import annotations

import datetime
import importlib.util
import sys
from pathlib import Path

import pytest
from django.utils import timezone
from shop.models import Customer, Order, OrderLine, Product

# The dev-only import tests need debug_toolbar installed to hide it; without the real package
# (it is a development dependency: pip install django-debug-toolbar), use the stand-in.
if importlib.util.find_spec("debug_toolbar") is None:
    sys.path.append(str(Path(__file__).parent / "stand_ins"))


@pytest.fixture
def customer(db: None) -> Customer:
    return Customer.objects.create(name="Ada", email="ada@example.com")


@pytest.fixture
def products(db: None) -> dict[str, Product]:
    return {
        sku: Product.objects.create(sku=sku, name=name, price_cents=price)
        for sku, name, price in [("TEA", "Green tea", 450), ("MUG", "Mug", 1200)]
    }


@pytest.fixture
def order(customer: Customer, products: dict[str, Product]) -> Order:
    placed = timezone.now() - datetime.timedelta(hours=1)
    order = Order.objects.create(customer=customer, placed=placed)
    OrderLine.objects.create(order=order, product=products["TEA"], quantity=3)
    OrderLine.objects.create(order=order, product=products["MUG"], quantity=1)
    return order
