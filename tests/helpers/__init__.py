"""Test helpers shared across test files."""
