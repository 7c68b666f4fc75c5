"""Sign-in with roles (issue 14): Airflow's FAB auth manager, tightened in three places for disclosures.

Configure with ``AIRFLOW__CORE__AUTH_MANAGER=caldicott_airflow.auth.CaldicottFabAuthManager`` and
``AIRFLOW__FAB__CONFIG_FILE`` pointing at ``deploy/webserver_config.py`` (directory sign-in, the group to role
mapping and :data:`ROLES_CONFIG_KEY`; docs/deployment.md "Sign-in and roles"). Airflow puts the plugins
folder on ``sys.path`` when it starts (``airflow.settings.prepare_syspath_for_config_and_plugins``), so the
api-server imports this module without ``PYTHONPATH``. The class name must keep ``FabAuthManager`` in it:
the dag-processor syncs each DAG's ``DAG:<dag_id>`` permissions only when that string is in
``[core] auth_manager`` (``airflow.dag_processing.collection``).

Why a subclass:

1. **Who may answer a held disclosure.** Airflow asks the auth manager ``is_authorized_hitl_task(
   assigned_users, user)`` and by default compares ``user.get_id()``; under FAB that is the numeric ``ab_user``
   id, which does not exist until a person first signs in, so ``CALDICOTT_APPROVERS`` (directory user names)
   could never match. Here the user's *name* must be assigned **and** the user must hold
   :data:`APPROVER_ROLE` in the auth manager's own database (mapped from a directory group at sign-in; a user
   cannot write it). Either alone is refused (403 "not a respondent").
2. **Answering is not editing the DAG.** FAB authorises ``PATCH .../hitlDetails`` (``PUT`` on
   ``DagAccessEntity.HITL_DETAIL``) only with ``can_edit`` on the DAG itself, which would also let approvers
   pause ``disclosure_request`` (and so stop its escalation timer). Here an answer needs ``can_edit`` on
   ``HITL Detail`` and ``can_read`` on the DAG; the assignment check above still applies.
3. **Roles as configuration.** Airflow's FAB security manager reads permissions from its database only
   (``User.perms``); FAB's ``FAB_ROLES`` creates empty role names there and ``[fab] custom_roles`` never
   updates a role that exists. So the roles in ``webserver_config.py`` (:data:`ROLES_CONFIG_KEY`) are written
   to the database, exactly (missing permissions added, others removed), each time the api-server builds
   its Flask app. A missing ``webserver_config.py`` (Flask loads it with ``silent=True``) or anonymous
   access (``AUTH_ROLE_PUBLIC`` / ``[fab] auth_role_public``) stops the api-server instead of running open.

FAB resource and action names: ``airflow.providers.fab.www.security.permissions``; how a REST call maps to
them: ``FabAuthManager.is_authorized_dag`` (apache-airflow-providers-fab 3.10.2).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.exceptions import AirflowConfigException
from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager
from airflow.providers.fab.www.security import permissions

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.base_auth_manager import ResourceMethod
    from airflow.providers.fab.auth_manager.models import User

log = logging.getLogger(__name__)

#: The role whose holders may answer a disclosure they are assigned to (``CALDICOTT_APPROVERS``).
APPROVER_ROLE = "Disclosure approver"
#: The key in ``webserver_config.py``: ``{role name: [(action, resource), ...]}``, synced at start-up.
ROLES_CONFIG_KEY = "CALDICOTT_ROLES"

Permissions = Iterable[tuple[str, str]]


class CaldicottFabAuthManager(FabAuthManager):
    """FAB auth manager with Caldicott's HITL rule and roles from configuration (see the module docstring)."""

    def is_authorized_hitl_task(self, *, assigned_users: set[str], user: User) -> bool:
        """Only an assigned approver, by user name, who holds :data:`APPROVER_ROLE` may answer."""
        name = user.get_name()
        roles = {role.name for role in getattr(user, "roles", None) or ()}
        allowed = bool(name) and name in assigned_users and APPROVER_ROLE in roles
        if not allowed:
            log.warning("HITL answer refused for %r: assigned=%s, has %r role=%s", name, name in assigned_users,
                        APPROVER_ROLE, APPROVER_ROLE in roles)
        return allowed

    def is_authorized_dag(self, *, method: ResourceMethod, user: User,
                          access_entity: DagAccessEntity | None = None, details: DagDetails | None = None) -> bool:
        """As FAB, except that answering a HITL task needs ``can_read`` on the DAG rather than ``can_edit``."""
        if access_entity == DagAccessEntity.HITL_DETAIL and method == "PUT" and details and details.id:
            return (self._is_authorized(method="PUT", resource_type=permissions.RESOURCE_HITL_DETAIL, user=user)
                    and super().is_authorized_dag(method="GET", user=user, details=details))
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)

    def init_flask_resources(self) -> None:
        """FAB's own start-up sync, then refuse anonymous access and write the configured roles."""
        from flask import current_app

        super().init_flask_resources()
        if self._get_auth_role_public():
            raise AirflowConfigException("anonymous access (AUTH_ROLE_PUBLIC / [fab] auth_role_public) is not "
                                         "allowed: every user signs in")
        roles = current_app.config.get(ROLES_CONFIG_KEY)
        if not roles:
            raise AirflowConfigException(
                f"{ROLES_CONFIG_KEY} is not set: the api-server did not load Caldicott's webserver_config.py "
                "(set AIRFLOW__FAB__CONFIG_FILE to deploy/webserver_config.py)")
        sync_roles(self.security_manager, roles)


def sync_roles(sm: Any, roles: Mapping[str, Permissions]) -> None:
    """Make each named role hold exactly the given ``(action, resource)`` permissions; other roles untouched.

    ``sm`` is FAB's security manager; its helpers create missing actions/resources and tolerate another
    api-server worker doing the same at the same moment.
    """
    for name, wanted in roles.items():
        role = sm.find_role(name) or sm.add_role(name)
        want = {sm.create_permission(action, resource) for action, resource in wanted}
        want.discard(None)
        have = set(role.permissions)
        for perm in have - want:
            sm.remove_permission_from_role(role, perm)
        for perm in want - have:
            sm.add_permission_to_role(role, perm)
        log.info("role %r synced: %d permissions", name, len(want))
