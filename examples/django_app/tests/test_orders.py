"""The ORM on dbguard's database: each test starts from the migrated, empty schema."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from shop.models import Customer, Order, OrderLine, Product


@pytest.mark.django_db
def test_each_test_starts_empty() -> None:
    assert Customer.objects.count() == Order.objects.count() == Product.objects.count() == 0


@pytest.mark.django_db
def test_order_total(order: Order) -> None:
    assert order.total_cents() == 3 * 450 + 1200
    total = OrderLine.objects.filter(order=order).aggregate(
        cents=Sum(F("quantity") * F("product__price_cents"))
    )
    assert total["cents"] == order.total_cents()


@pytest.mark.django_db
def test_ship_sets_the_status_and_time(order: Order) -> None:
    order.ship()
    order.refresh_from_db()
    assert order.status == Order.Status.SHIPPED
    assert order.shipped is not None and order.shipped > order.placed


@pytest.mark.django_db
def test_one_line_per_product(order: Order, products: dict[str, Product]) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        OrderLine.objects.create(order=order, product=products["TEA"], quantity=1)
    assert order.lines.count() == 2


@pytest.mark.django_db
def test_emails_are_unique(customer: Customer) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Customer.objects.create(name="Ada again", email=customer.email)


@pytest.mark.django_db
def test_prefetch_keeps_queries_flat(order: Order, django_assert_num_queries) -> None:
    expected = order.total_cents()
    with django_assert_num_queries(3):  # orders, their lines, the lines' products
        orders = list(Order.objects.prefetch_related("lines__product"))
        assert [o.total_cents() for o in orders] == [expected]
