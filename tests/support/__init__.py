"""Test support code shared by several test modules (fixtures, fake servers, data builders)."""
