#!/bin/sh
# Install xfrmwatch as a service, the way the README's "Running as a service" says,
# inside the container's root (run by systemd-nspawn, not booted, no network):
# /srv/wheelhouse holds the wheels, /srv/contrib the checkout's contrib/,
# /srv/config.toml the configuration.
set -eu
python3 -m venv /opt/xfrmwatch
/opt/xfrmwatch/bin/pip install -q --no-index --find-links /srv/wheelhouse xfrmwatch
ln -s /opt/xfrmwatch/bin/xfrmwatch /usr/local/bin/xfrmwatch

install -m 0644 /srv/contrib/systemd/xfrmwatch.service /etc/systemd/system/
install -d /etc/xfrmwatch
install -m 0644 /srv/config.toml /etc/xfrmwatch/config.toml
xfrmwatch config check --config /etc/xfrmwatch/config.toml
install -m 0644 /srv/contrib/systemd/xfrmwatch.catalog /usr/lib/systemd/catalog/
journalctl --update-catalog
systemctl enable xfrmwatch.service
