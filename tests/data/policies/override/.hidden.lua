return 42 -- would fail to load: names starting with '.' are skipped
