"""The words of the link pages, in French and English, and which of the two a customer reads."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Literal

Lang = Literal["fr", "en"]
LANGS: Final[tuple[Lang, ...]] = ("fr", "en")
FALLBACK_LANG: Final[Lang] = "fr"

# French "e-mail" uses a non-breaking hyphen (\u2011) so a narrow screen never splits it.
TEXTS: Final[Mapping[Lang, Mapping[str, str]]] = {
    "fr": {
        "switch": "English",
        "invalid_title": "Lien invalide",
        "invalid_damaged": "Ce lien est incomplet ou abîmé. Copiez-le en entier depuis l’e\u2011mail.",
        "invalid_forged": "Ce lien n’est pas valide.",
        "invalid_outdated": "Ce lien n’est plus valide. Utilisez celui de l’e\u2011mail le plus récent.",
        "other_address_title": "Lien pour une autre adresse",
        "other_address": "Ce lien a été envoyé à une autre adresse que celle de votre compte. "
        "Confirmez depuis l’e\u2011mail le plus récent.",
        "retry_title": "Veuillez réessayer",
        "retry": "Votre demande n’a pas pu être enregistrée pour le moment. Réessayez dans une minute.",
        "limited_title": "Trop de demandes",
        "limited": "Cette page a été demandée trop souvent en peu de temps. Réessayez dans une minute.",
        "bad_form_title": "Formulaire incomplet",
        "bad_form": "Ce formulaire n’a pas pu être lu. Revenez à la page des préférences et réessayez.",
        "unsub_title": "Se désinscrire",
        "unsub_question": "Vous ne recevrez plus aucun e\u2011mail marketing de {shop}.",
        "unsub_note": "Les e\u2011mails liés à vos commandes (confirmation, livraison) continuent d’arriver.",
        "unsub_button": "Me désinscrire",
        "unsub_fewer": "Vous préférez en recevoir moins ?",
        "unsub_fewer_link": "Choisir les e\u2011mails que je reçois",
        "unsub_done_title": "Vous êtes désinscrit(e).",
        "unsub_done": "Vous ne recevrez plus ces e\u2011mails.",
        "back_to_shop": "Retour sur {shop}",
        "prefs_title": "Vos préférences e\u2011mail",
        "prefs_intro": "Choisissez les e\u2011mails que vous souhaitez recevoir de {shop}.",
        "prefs_legend": "Je souhaite recevoir :",
        "prefs_opted_out": "Vous êtes actuellement désinscrit(e) de tous nos e\u2011mails marketing.",
        "prefs_save": "Enregistrer mes préférences",
        "prefs_all_title": "Ne plus rien recevoir",
        "prefs_all": "Vous pouvez aussi vous désinscrire de tous nos e\u2011mails marketing.",
        "prefs_all_button": "Me désinscrire de tout",
        "prefs_done_title": "Vos préférences sont enregistrées.",
        "prefs_done_left": "Vous ne recevrez plus : {categories}.",
        "prefs_done_all": "Vous recevez tous nos e\u2011mails.",
        "prefs_done_none": "Vous ne recevrez plus aucun de ces e\u2011mails.",
        "prefs_change": "Modifier mes préférences",
        "cat_cart_reminders": "Rappels de panier",
        "cat_cart_reminders_hint": "Quand des articles attendent dans votre panier.",
        "cat_offers": "Offres et promotions",
        "cat_offers_hint": "Codes promo, cadeaux d’anniversaire, invitations.",
        "cat_news": "Nouveautés et conseils",
        "cat_news_hint": "Bienvenue, conseils après un achat, nouveautés.",
        "confirm_title": "Confirmez votre inscription",
        "confirm_question": "Souhaitez-vous recevoir les e\u2011mails de {shop} ?",
        "confirm_button": "Oui, je confirme",
        "confirm_done_title": "Votre inscription est confirmée.",
        "confirm_done": "Merci !",
    },
    "en": {
        "switch": "Français",
        "invalid_title": "Invalid link",
        "invalid_damaged": "This link is incomplete or damaged. Copy it whole from the email.",
        "invalid_forged": "This link is not valid.",
        "invalid_outdated": "This link is no longer valid. Use the one in the most recent email.",
        "other_address_title": "Link for another address",
        "other_address": "This link was sent to another address than your account’s. "
        "Confirm from the most recent email.",
        "retry_title": "Please try again",
        "retry": "We could not process your request right now. Please try again in a minute.",
        "limited_title": "Too many requests",
        "limited": "This page was asked for too often in a short time. Please try again in a minute.",
        "bad_form_title": "Incomplete form",
        "bad_form": "This form could not be read. Go back to the preferences page and try again.",
        "unsub_title": "Unsubscribe",
        "unsub_question": "You will no longer receive any marketing email from {shop}.",
        "unsub_note": "Emails about your orders (confirmation, delivery) still arrive.",
        "unsub_button": "Unsubscribe",
        "unsub_fewer": "Would you rather receive fewer?",
        "unsub_fewer_link": "Choose the emails I receive",
        "unsub_done_title": "You are unsubscribed.",
        "unsub_done": "You will not receive these emails any more.",
        "back_to_shop": "Back to {shop}",
        "prefs_title": "Your email preferences",
        "prefs_intro": "Choose the emails you want to receive from {shop}.",
        "prefs_legend": "I want to receive:",
        "prefs_opted_out": "You are currently unsubscribed from all our marketing emails.",
        "prefs_save": "Save my preferences",
        "prefs_all_title": "Receive nothing",
        "prefs_all": "You can also unsubscribe from all our marketing emails.",
        "prefs_all_button": "Unsubscribe from everything",
        "prefs_done_title": "Your preferences are saved.",
        "prefs_done_left": "You will no longer receive: {categories}.",
        "prefs_done_all": "You receive all our emails.",
        "prefs_done_none": "You will not receive any of these emails any more.",
        "prefs_change": "Change my preferences",
        "cat_cart_reminders": "Cart reminders",
        "cat_cart_reminders_hint": "When items are waiting in your cart.",
        "cat_offers": "Offers and promotions",
        "cat_offers_hint": "Promo codes, birthday gifts, invitations.",
        "cat_news": "News and tips",
        "cat_news_hint": "Welcome, tips after a purchase, what is new.",
        "confirm_title": "Confirm your subscription",
        "confirm_question": "Do you want to receive emails from {shop}?",
        "confirm_button": "Yes, confirm",
        "confirm_done_title": "Your subscription is confirmed.",
        "confirm_done": "Thank you!",
    },
}


def lang_of(locale: object) -> Lang | None:
    """The page language for a locale such as fr, fr-FR, en_GB; None when we have no pages in it."""
    if not isinstance(locale, str):
        return None
    primary = re.split(r"[-_]", locale.strip(), maxsplit=1)[0].lower()
    for lang in LANGS:
        if primary == lang:
            return lang
    return None


def say(lang: Lang, key: str, **values: str) -> str:
    return TEXTS[lang][key].format(**values)
