"""Imports every built-in pass module so that its passes register."""
