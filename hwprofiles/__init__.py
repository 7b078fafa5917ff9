"""Shipped hardware profiles (JSON data with provenance), one file per GPU kind."""
