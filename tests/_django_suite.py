"""Run Django's own cache-backend tests (``BaseCacheTests`` from the ``tests/cache`` package of
Django's source distribution) against ``ekv.contrib.django.EKVCache``, in a process of its own.

    python tests/_django_suite.py DJANGO_TESTS_DIR DATA_DIR

DJANGO_TESTS_DIR is the ``tests`` directory of the extracted sdist (it holds ``cache/``);
tests/test_django_cache.py fetches it. Django's settings are process-wide, hence the separate
process. The last line printed is a JSON summary (tests run, failures, errors, skips with
their reasons) that the pytest test checks; the unittest report above it is for people.

EXCLUDED is every test of BaseCacheTests that does not run against ekv, with the reason;
docs/django.md names each one and says why (tests/test_django_cache.py checks that it does).
"""

from __future__ import annotations

import json
import sys
import unittest

EXCLUDED = {
    "test_cull": "ekv does not cull: keys leave only by expiry or deletion (OPTIONS MAX_ENTRIES is refused)",
    "test_zero_cull": "ekv does not cull: keys leave only by expiry or deletion (OPTIONS CULL_FREQUENCY is refused)",
    "test_cull_delete_when_store_empty": "ekv does not cull (no MAX_ENTRIES)",
}


def main(tests_dir: str, data_dir: str) -> int:
    sys.path.insert(0, tests_dir)
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="ekv-django-suite",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "cache"],
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        CACHES={"default": {"BACKEND": "ekv.contrib.django.EKVCache", "LOCATION": data_dir}},
        USE_TZ=True,
    )
    django.setup()

    from cache import tests as dj  # Django's tests/cache/tests.py
    from django.test import TestCase, override_settings
    from django.test.utils import setup_test_environment, teardown_test_environment

    @override_settings(
        CACHES=dj.caches_setting_for_tests(
            BACKEND="ekv.contrib.django.EKVCache",
            LOCATION=data_dir,
            OPTIONS={"name": "django-suite", "shards": 2, "log": False},
            # As Django's memcached and redis tests: these two aliases carry MAX_ENTRIES.
            exclude={"cull", "zero_cull"},
        )
    )
    class EKVCacheTests(dj.BaseCacheTests, TestCase):  # type: ignore[misc]
        pass

    for name, reason in EXCLUDED.items():
        setattr(EKVCacheTests, name, unittest.skip(reason)(getattr(dj.BaseCacheTests, name)))

    setup_test_environment()
    from django.test.utils import setup_databases, teardown_databases

    old_config = setup_databases(verbosity=0, interactive=False)
    try:
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(EKVCacheTests)
        result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    finally:
        teardown_databases(old_config, verbosity=0)
        teardown_test_environment()
    summary = {
        "run": result.testsRun,
        "failures": [(t.id(), tb) for t, tb in result.failures],
        "errors": [(t.id(), tb) for t, tb in result.errors],
        "skipped": {t.id().rsplit(".", 1)[1]: reason for t, reason in result.skipped},
        "unexpected_successes": [t.id() for t in result.unexpectedSuccesses],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
