"""Keystone for the lane: database, fernet keys, bootstrap, then service
users, roles and the catalog through the API.

`keystone-manage bootstrap` makes the admin user, the admin project, the
admin/member/reader roles, RegionOne and the identity endpoint; its
password comes through OS_BOOTSTRAP_PASSWORD, never the command line.
The rest (the `service` project and role, one service user per service
with admin + service roles there, Kerbside's access group with the
cloud's admin in it, and every other service's endpoints) goes through
the Identity API, idempotently.
"""

import json
import os
import time

from kerbside_tempest_plugin.lane.openstack import api
from kerbside_tempest_plugin.lane.openstack import config

INTERFACES = ('public', 'internal')


def prepare(services, layout, pool=None, step=None):
    """db_sync, fernet and credential key repositories, bootstrap.

    With `pool` (a concurrent.futures executor) the two key repositories
    are made while db_sync runs (neither touches the database); bootstrap
    needs all three. `step()`, when given, is called between commands (it
    raises to stop early).
    """
    conf = os.path.join(layout.conf_dir('keystone'), 'keystone.conf')
    manage = [services.bin('keystone-manage'), '--config-file', conf]
    for repo in ('keystone-fernet', 'keystone-credential'):
        os.makedirs(os.path.join(layout.secrets_dir, repo), mode=0o700,
                    exist_ok=True)
    (db, db_args), fernet, credential, (boot, boot_args) = \
        _commands(layout)
    keys = [(name, manage + args) for name, args in (fernet, credential)]
    side = [pool.submit(services.run, *k) for k in keys] if pool else []
    services.run(db, manage + db_args)
    for future in side:
        future.result()
    for k in (keys if not pool else ()):
        if step:
            step()
        services.run(*k)
    if step:
        step()
    services.run(boot, manage + boot_args,
                 env={'OS_BOOTSTRAP_PASSWORD': layout.passwords['admin']})


# Keystone's one-shot setup in one Python process (the parallel
# bring-up): keystone-manage's own command classes, each run as
# keystone-manage's main() runs one (oslo.config parses the command line
# again for each: ConfigOpts.__call__ clears the last parse), after one
# import of Keystone, instead of four processes that each import it.
# argv[1]: a JSON file for each step's seconds; argv[2]: keystone.conf;
# then one JSON [name, keystone-manage arguments] per step. The admin
# password comes through OS_BOOTSTRAP_PASSWORD, as for keystone-manage.
SETUP_SHIM = """import json
import sys
import time

t0 = time.monotonic()
import pbr.version
from keystone.cmd import cli
from keystone.common import sql
import keystone.conf

timings_file, conf_file = sys.argv[1], sys.argv[2]
steps = [json.loads(a) for a in sys.argv[3:]]
CONF = keystone.conf.CONF
CONF.register_cli_opt(cli.command_opt)
keystone.conf.configure()
sql.initialize()
keystone.conf.set_default_for_default_log_levels()
timings = {'keystone-manage-import': time.monotonic() - t0}
version = pbr.version.VersionInfo('keystone').version_string()
for i, (name, args) in enumerate(steps):
    t = time.monotonic()
    print('== %s' % name, flush=True)
    CONF(args=['--config-file', conf_file] + args, project='keystone',
         version=version)
    if i == 0:
        keystone.conf.setup_logging()
    CONF.command.cmd_class.main()
    timings[name] = time.monotonic() - t
    with open(timings_file, 'w') as f:
        json.dump(timings, f)
"""


def prepare_in_one_process(services, layout):
    """prepare()'s four keystone-manage commands (db_sync, fernet_setup,
    credential_setup, bootstrap) in one process (SETUP_SHIM); each
    step's seconds in services.timings under the command's own name, the
    whole process as `keystone-setup`.
    """
    conf = os.path.join(layout.conf_dir('keystone'), 'keystone.conf')
    for repo in ('keystone-fernet', 'keystone-credential'):
        os.makedirs(os.path.join(layout.secrets_dir, repo), mode=0o700,
                    exist_ok=True)
    services.run_script(
        'keystone-setup', SETUP_SHIM, [conf] + [
            json.dumps(step) for step in _commands(layout)],
        env={'OS_BOOTSTRAP_PASSWORD': layout.passwords['admin']})


def _commands(layout):
    """(timings name, keystone-manage arguments) of prepare()'s steps, in
    order.
    """
    owner = ['--keystone-user', 'root', '--keystone-group', 'root']
    return [
        ('keystone-db-sync', ['db_sync']),
        ('keystone-fernet-setup', ['fernet_setup'] + owner),
        ('keystone-credential-setup', ['credential_setup'] + owner),
        ('keystone-bootstrap', [
            'bootstrap', '--bootstrap-username', 'admin',
            '--bootstrap-project-name', 'admin',
            '--bootstrap-role-name', 'admin',
            '--bootstrap-service-name', 'keystone',
            '--bootstrap-region-id', config.REGION,
            '--bootstrap-admin-url', layout.auth_url,
            '--bootstrap-public-url', layout.auth_url,
            '--bootstrap-internal-url', layout.auth_url])]


def admin_client(layout, redactor):
    return api.Client(layout.auth_url, 'admin', layout.passwords['admin'],
                      project='admin', redactor=redactor)


def _ensure(client, collection, key, name, body):
    found = client.find('identity', collection, key, name)
    if found:
        return found
    return client.call('POST', 'identity', '/' + collection,
                       {key[:-1]: body}, expect=(201,))[key[:-1]]


def kerbside_access(client, user):
    """Kerbside's access group (KEYSTONE_ACCESS_GROUP) with `user` (a
    Keystone user dict) in it: who may log in to Kerbside's API with
    POST /auth. Idempotent. Returns the group.
    """
    group = _ensure(client, 'groups', 'groups', config.KERBSIDE_ACCESS_GROUP,
                    {'name': config.KERBSIDE_ACCESS_GROUP,
                     'domain_id': 'default',
                     'description': 'who may log in to Kerbside\'s API'})
    client.call('PUT', 'identity', '/groups/%s/users/%s' % (
        group['id'], user['id']), expect=(204,))
    return group


# tempest's pre-provisioned member (the job's accounts.yaml: tempest_conf.
# accounts_yaml): one project and one user with the member role there,
# made once per cloud instead of a project and users per test class.
TEMPEST_PROJECT = 'ktp-tempest'
TEMPEST_USER = 'ktp-tempest-member'


def tempest_account(client, password):
    """The project and member user tempest's pre-provisioned primary
    credentials name (idempotent; the password is set either way).
    Returns (project name, user name).
    """
    project = _ensure(client, 'projects', 'projects', TEMPEST_PROJECT,
                      {'name': TEMPEST_PROJECT, 'domain_id': 'default',
                       'description': 'tempest\'s member (kerbside lane)'})
    user = client.find('identity', 'users', 'users', TEMPEST_USER)
    if user is None:
        user = client.call('POST', 'identity', '/users', {'user': {
            'name': TEMPEST_USER, 'domain_id': 'default',
            'default_project_id': project['id'], 'password': password}},
            expect=(201,))['user']
    else:
        client.call('PATCH', 'identity', '/users/%s' % user['id'], {
            'user': {'password': password}})
    role = client.find('identity', 'roles', 'roles', 'member')
    client.call('PUT', 'identity', '/projects/%s/users/%s/roles/%s' % (
        project['id'], user['id'], role['id']), expect=(201, 204))
    return TEMPEST_PROJECT, TEMPEST_USER


def register(layout, redactor, timings):
    """Service project, role, users and the catalog. Returns the admin
    client (authenticated).
    """
    t = time.monotonic()
    client = admin_client(layout, redactor)
    client.authenticate()
    project = _ensure(client, 'projects', 'projects',
                      config.SERVICE_PROJECT,
                      {'name': config.SERVICE_PROJECT, 'domain_id': 'default',
                       'description': 'kerbside lane service users'})
    roles = {}
    for role in ('admin', 'service', 'member', 'reader'):
        roles[role] = _ensure(client, 'roles', 'roles', role,
                              {'name': role})
    admin_user = client.find('identity', 'users', 'users', 'admin')
    client.call('PUT', 'identity', '/projects/%s/users/%s/roles/%s' % (
        project['id'], admin_user['id'], roles['admin']['id']),
        expect=(201, 204))
    for user in config.SERVICE_USERS:
        u = client.find('identity', 'users', 'users', user)
        if u is None:
            u = client.call('POST', 'identity', '/users', {'user': {
                'name': user, 'domain_id': 'default',
                'password': layout.passwords[user]}},
                expect=(201,))['user']
        else:
            client.call('PATCH', 'identity', '/users/%s' % u['id'], {
                'user': {'password': layout.passwords[user]}})
        for role in ('admin', 'service'):
            client.call('PUT', 'identity', '/projects/%s/users/%s/roles/%s'
                        % (project['id'], u['id'], roles[role]['id']),
                        expect=(201, 204))
    kerbside_access(client, admin_user if config.KERBSIDE_OPERATOR ==
                    'admin' else client.find('identity', 'users', 'users',
                                             config.KERBSIDE_OPERATOR))
    existing = client.call('GET', 'identity', '/endpoints')['endpoints']
    for name, stype, url in layout.endpoints():
        service = _ensure(client, 'services', 'services', name,
                          {'name': name, 'type': stype, 'enabled': True})
        have = {e['interface'] for e in existing
                if e['service_id'] == service['id']}
        for interface in INTERFACES:
            if interface in have:
                continue
            client.call('POST', 'identity', '/endpoints', {'endpoint': {
                'service_id': service['id'], 'interface': interface,
                'url': url, 'region_id': config.REGION, 'enabled': True}},
                expect=(201,))
    client.authenticate()  # a token whose catalog has every service
    timings['keystone_register'] = time.monotonic() - t
    return client
