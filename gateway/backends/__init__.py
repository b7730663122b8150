"""Backend adapters. Only modules in this package import vendor SDKs, and only lazily."""
