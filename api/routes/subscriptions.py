"""Placeholder: filled in by the work on this feature."""

from fastapi import APIRouter

router = APIRouter()
