#!/usr/bin/env python3
"""Check .zuul.yaml as far as an offline check can.

Two layers, both reporting one readable line per problem:

* Always: this script's own check of the documented job/project shapes
  (every top-level item is a single-key mapping of a known type; job and
  project attributes are known names with the right types; no duplicate
  YAML keys), plus what only this repository can answer: every playbook a
  job names exists, every job a project pipeline lists is defined here and
  every ``parent`` is either defined here or ``base``.
* With ``--zuul-schema``: Zuul's own loader and voluptuous schemas from
  the ``zuul`` package (``zuul.configloader``), run on the same file. This
  needs an interpreter where ``import zuul`` works; tools/lint-ci.sh makes
  a throwaway venv for it (the package is ~500 MB, too heavy for .venv).

What no offline check can answer (the deployment's ``base`` job, its
nodesets and pipelines, secrets) is listed in docs/plans/ci-definitions.md.

Exit status: 0 clean, 1 problems found, 2 the checker could not run.
"""

import argparse
import os
import sys

import yaml

# Top-level item types Zuul accepts in a project's configuration.
ITEM_TYPES = (
    'job', 'project', 'project-template', 'nodeset', 'secret',
    'semaphore', 'queue', 'pragma', 'pipeline', 'image', 'flavor',
    'label', 'section', 'provider')

STR = (str,)
BOOL = (bool,)
INT = (int,)
STR_OR_LIST = (str, list)
DICT = (dict,)
NONE = (type(None),)

# Job attributes from Zuul's job reference, with the types this check
# enforces. Attributes whose structure is richer than a type (playbooks,
# nodeset, roles, ...) get their own check below.
JOB_ATTRIBUTES = {
    'name': STR, 'parent': STR + NONE, 'description': STR,
    'variant-description': STR, 'final': BOOL, 'abstract': BOOL,
    'protected': BOOL, 'intermediate': BOOL, 'voting': BOOL,
    'hold-following-changes': BOOL, 'post-review': BOOL,
    'match-on-config-updates': BOOL, 'ansible-split-streams': BOOL,
    'timeout': INT, 'pre-timeout': INT, 'post-timeout': INT,
    'attempts': INT, 'ansible-version': (str, int, float),
    'nodeset': (str, dict), 'pre-run': STR_OR_LIST, 'run': STR_OR_LIST,
    'post-run': STR_OR_LIST, 'cleanup-run': STR_OR_LIST,
    'roles': (dict, list), 'required-projects': STR_OR_LIST,
    'vars': DICT, 'extra-vars': DICT, 'host-vars': DICT,
    'group-vars': DICT, 'include-vars': STR_OR_LIST + DICT,
    'dependencies': STR_OR_LIST, 'requires': STR_OR_LIST,
    'provides': STR_OR_LIST, 'tags': STR_OR_LIST,
    'branches': STR_OR_LIST + DICT, 'files': STR_OR_LIST + DICT,
    'irrelevant-files': STR_OR_LIST + DICT, 'secrets': STR_OR_LIST + DICT,
    'semaphore': (str, dict), 'semaphores': STR_OR_LIST + DICT,
    'allowed-projects': STR_OR_LIST, 'override-branch': STR,
    'override-checkout': STR, 'failure-message': STR,
    'success-message': STR, 'failure-url': STR, 'success-url': STR,
    'workspace-scheme': STR, 'workspace-checkout': (bool, str),
    'deduplicate': (bool, str), 'failure-output': STR_OR_LIST,
    'include-projects': STR_OR_LIST, 'exclude-projects': STR_OR_LIST,
    'image-build-name': STR, 'type': STR, 'preserve-home-paths':
    STR_OR_LIST, 'secret-exposure': STR, 'attribute-control': DICT,
}
PLAYBOOK_ATTRIBUTES = ('pre-run', 'run', 'post-run', 'cleanup-run')
PROJECT_ATTRIBUTES = {
    'name': STR, 'description': STR, 'templates': (list,),
    'vars': DICT, 'merge-mode': STR, 'default-branch': STR, 'queue': STR,
    'branches': STR_OR_LIST + DICT,
}
PIPELINE_ATTRIBUTES = {
    'jobs': (list,), 'debug': BOOL, 'fail-fast': BOOL,
    'parameters': (list, dict),
}


class ZuulConfigError(Exception):
    """The file could not be read as a Zuul configuration at all."""


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate mapping keys, as Zuul does."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ZuulConfigError(
                    'line %d: duplicate key %r'
                    % (key_node.start_mark.line + 1, key))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(path):
    """The parsed file: a list of single-key mappings (ZuulConfigError)."""
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=UniqueKeyLoader)
    except OSError as e:
        raise ZuulConfigError('cannot read %s: %s' % (path, e))
    except yaml.YAMLError as e:
        raise ZuulConfigError('%s is not valid YAML: %s' % (path, e))
    if not isinstance(data, list):
        raise ZuulConfigError(
            '%s: the top level must be a list of items, got %s'
            % (path, type(data).__name__))
    return data


def _type_error(where, attr, value, types):
    names = '/'.join(t.__name__ for t in types)
    return '%s: %r must be %s, got %s %r' % (
        where, attr, names, type(value).__name__, value)


def _check_attrs(where, conf, known, errors):
    for attr, value in conf.items():
        if attr not in known:
            errors.append('%s: unknown attribute %r' % (where, attr))
        elif not isinstance(value, known[attr]):
            errors.append(_type_error(where, attr, value, known[attr]))


def playbook_names(job, attr):
    """The playbook paths one job attribute names (str, list, {name})."""
    value = job.get(attr)
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    names = []
    for item in items:
        if isinstance(item, dict):
            item = item.get('name')
        if isinstance(item, str):
            names.append(item)
    return names


def jobs(data):
    """{name: job mapping} for every job item in the parsed file."""
    found = {}
    for item in data:
        if isinstance(item, dict) and isinstance(item.get('job'), dict):
            name = item['job'].get('name')
            if isinstance(name, str):
                found[name] = item['job']
    return found


def _check_job(index, job, root, errors):
    where = 'item %d (job %s)' % (index, job.get('name', '?'))
    if not isinstance(job.get('name'), str):
        errors.append('%s: a job needs a string "name"' % where)
    _check_attrs(where, job, JOB_ATTRIBUTES, errors)
    for attr in PLAYBOOK_ATTRIBUTES:
        value = job.get(attr)
        items = value if isinstance(value, list) else [value]
        for item in items if value is not None else []:
            if isinstance(item, dict):
                item = item.get('name')
            if not isinstance(item, str):
                errors.append('%s: %r entries must be playbook paths'
                              % (where, attr))
                continue
            if os.path.isabs(item) or not item.endswith(('.yaml', '.yml')):
                errors.append('%s: %r %r must be a relative .yaml path'
                              % (where, attr, item))
            elif not os.path.isfile(os.path.join(root, item)):
                errors.append('%s: %r playbook %s does not exist'
                              % (where, attr, item))
    timeout = job.get('timeout')
    if isinstance(timeout, int) and timeout <= 0:
        errors.append('%s: "timeout" must be positive' % where)


def _check_project(index, project, defined, errors):
    where = 'item %d (project)' % index
    for attr, value in project.items():
        if attr in PROJECT_ATTRIBUTES:
            if not isinstance(value, PROJECT_ATTRIBUTES[attr]):
                errors.append(_type_error(
                    where, attr, value, PROJECT_ATTRIBUTES[attr]))
            continue
        # Any other key is a pipeline name.
        pwhere = '%s pipeline %s' % (where, attr)
        if not isinstance(value, dict):
            errors.append('%s: must be a mapping with "jobs"' % pwhere)
            continue
        _check_attrs(pwhere, value, PIPELINE_ATTRIBUTES, errors)
        for entry in value.get('jobs') or []:
            if isinstance(entry, dict) and len(entry) == 1:
                name, attrs = next(iter(entry.items()))
                if attrs is not None and not isinstance(attrs, dict):
                    errors.append('%s: job %s variant must be a mapping'
                                  % (pwhere, name))
                elif attrs:
                    _check_attrs('%s job %s' % (pwhere, name), attrs,
                                 JOB_ATTRIBUTES, errors)
            elif isinstance(entry, str):
                name = entry
            else:
                errors.append('%s: a job entry must be a name or a '
                              'single-key mapping, got %r' % (pwhere, entry))
                continue
            if name not in defined:
                errors.append('%s: job %s is not defined in this file'
                              % (pwhere, name))


def check(path, root=None):
    """Every problem found in the Zuul file at path, as readable lines."""
    root = root or os.path.dirname(os.path.abspath(path))
    try:
        data = load(path)
    except ZuulConfigError as e:
        return [str(e)]
    errors = []
    for index, item in enumerate(data, 1):
        if not isinstance(item, dict) or len(item) != 1:
            errors.append('item %d: must be a mapping with exactly one key '
                          '(one of %s)' % (index, ', '.join(ITEM_TYPES)))
            continue
        kind, conf = next(iter(item.items()))
        if kind not in ITEM_TYPES:
            errors.append('item %d: unknown item type %r' % (index, kind))
        elif not isinstance(conf, dict):
            errors.append('item %d: %s must be a mapping' % (index, kind))
        elif kind == 'job':
            _check_job(index, conf, root, errors)
        elif kind == 'project':
            _check_project(index, conf, jobs(data), errors)
    defined = jobs(data)
    for name, job in defined.items():
        parent = job.get('parent')
        if isinstance(parent, str) and parent != 'base' \
                and parent not in defined:
            errors.append('job %s: parent %s is neither base nor defined '
                          'in this file' % (name, parent))
    return errors


def check_with_zuul(path):
    """Problems Zuul's own loader and schemas find (needs zuul)."""
    try:
        import voluptuous
        from zuul import configloader
        from zuul import model
    except ImportError as e:
        raise ZuulConfigError(
            'zuul is not importable by %s (%s): run tools/lint-ci.sh, '
            'which makes the zuul venv' % (sys.executable, e))
    with open(path) as f:
        text = f.read()
    context = model.SourceContext(
        'example.org/kerbside-tempest-plugin', 'kerbside-tempest-plugin',
        'offline-check', 'master', os.path.basename(path))
    try:
        data = configloader.safe_load_yaml(text, context)
        unparsed = model.UnparsedConfig()
        unparsed.extend(data)
    except Exception as e:
        return ['zuul loader: %s' % (str(e).strip() or type(e).__name__)]
    checks = (
        ('job', unparsed.jobs, configloader.JobParser.schema),
        ('project', unparsed.projects,
         configloader.ProjectParser.getSchema(None)),
        ('project-template', unparsed.project_templates,
         configloader.ProjectTemplateParser.getSchema(None)),
        ('nodeset', unparsed.nodesets,
         configloader.NodeSetParser.getSchema(None)),
    )
    errors = []
    for kind, items, schema in checks:
        for conf in items:
            try:
                schema(conf)
            except voluptuous.Invalid as e:
                errors.append('zuul schema, %s %s: %s'
                              % (kind, conf.get('name', ''), e))
    for kind in ('secrets', 'semaphores', 'queues', 'pragmas', 'pipelines'):
        if getattr(unparsed, kind):
            errors.append('zuul schema: %s items are not checked by this '
                          'script; extend tools/check_zuul.py' % kind)
    return errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('paths', nargs='*', default=['.zuul.yaml'])
    parser.add_argument('--zuul-schema', action='store_true',
                        help="also run Zuul's own loader and schemas")
    parser.add_argument('--zuul-only', action='store_true',
                        help="only Zuul's loader and schemas")
    args = parser.parse_args(argv)
    args.zuul_schema = args.zuul_schema or args.zuul_only
    failed = False
    for path in args.paths:
        errors = [] if args.zuul_only else check(path)
        if args.zuul_schema:
            try:
                errors += check_with_zuul(path)
            except ZuulConfigError as e:
                print('check_zuul: %s' % e, file=sys.stderr)
                return 2
        for line in errors:
            print('%s: %s' % (path, line))
        failed = failed or bool(errors)
        if not errors:
            what = ['own checks'] * (not args.zuul_only) + \
                ['zuul schema'] * args.zuul_schema
            print('%s: ok (%s)' % (path, ' + '.join(what)))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
