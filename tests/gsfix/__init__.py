"""Tiny teacher generators for the GS / ``gcompiler compress`` tests (importable as ``gsfix.teachers:Class``)."""
