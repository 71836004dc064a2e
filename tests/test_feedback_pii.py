"""PII masking: what is personal data, and what only looks like it."""

from feedback.pii import luhn_valid, scrub


def test_masks_emails_phones_and_luhn_valid_cards():
    text, found = scrub("Mail jane.doe@example.com, call +1 (555) 123-4567 or 020 7946 0958, card 4111-1111-1111-1111.")
    assert text == "Mail [EMAIL], call [PHONE] or [PHONE], card [CARD]."
    assert [m.kind for m in found] == ["email", "card", "phone", "phone"]
    assert found[1].preview == "…1111"  # the reviewer sees which card, not the number


def test_leaves_order_numbers_dates_prices_and_hours_alone():
    text = "Order 4111111111111112 from 2024-05-01 costs 1.299,00; open 9:00-17:30, 30 days to return."
    assert not luhn_valid("4111111111111112")
    assert scrub(text) == (text, [])


def test_scrubbing_twice_changes_nothing():
    once, _ = scrub("reach me at bob@shop.example or 555-123-4567")
    assert scrub(once) == (once, [])


def test_the_companys_own_contacts_are_kept():
    text, found = scrub("Call us at 1-800-555-0142 or write to help@acme.example; I am jane@home.example.",
                        keep=["1-800-555-0142", "acme.example"])
    assert text == "Call us at 1-800-555-0142 or write to help@acme.example; I am [EMAIL]."
    assert [m.kind for m in found] == ["email"]


def test_training_data_keeps_the_one_list_of_company_contacts(make_settings):
    """Every text bound for training (answers, alternative questions, DPO's rejected answers) is scrubbed
    with ``company_contacts``: the profile's hotline, ``pii_keep`` and contacts kept in review alike."""
    from feedback.pii import training_scrubber
    from tuneloop.core.company import keep_contacts

    settings = make_settings(company_hotline="1-800-555-0142", pii_keep=["help@acme.example"])
    keep_contacts(settings, ["+44 20 7946 0000"])
    clean = training_scrubber(settings)
    assert clean("Call 1-800-555-0142, +44 20 7946 0000 or help@acme.example, not 555-123-4567.") == (
        "Call 1-800-555-0142, +44 20 7946 0000 or help@acme.example, not [PHONE].")
    assert training_scrubber(settings.model_copy(update={"scrub_pii": False}))("call 555-123-4567") == "call 555-123-4567"
