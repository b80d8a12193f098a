//! Tenants and API keys on SQL.

use async_trait::async_trait;
use consent_core::access::{ApiKey, Tenant, scopes_from_text, scopes_to_text};
use consent_core::{ConsentError, Result, Timestamp};
use consent_store::AccessStore;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::errors::db;
use crate::{SqlStore, hash32};

const KEY_COLUMNS: &str =
    "key_id, tenant_id, name, scopes, secret_sha256, created_at, expires_at, revoked_at";

fn key_from_row(row: &AnyRow) -> Result<ApiKey> {
    Ok(ApiKey {
        key_id: row.try_get(0).map_err(db)?,
        tenant_id: row.try_get(1).map_err(db)?,
        name: row.try_get(2).map_err(db)?,
        scopes: scopes_from_text(&row.try_get::<String, _>(3).map_err(db)?)?,
        secret_sha256: hash32(row.try_get(4).map_err(db)?, "secret_sha256")?,
        created_at: Timestamp(row.try_get(5).map_err(db)?),
        expires_at: row.try_get::<Option<i64>, _>(6).map_err(db)?.map(Timestamp),
        revoked_at: row.try_get::<Option<i64>, _>(7).map_err(db)?.map(Timestamp),
    })
}

fn tenant_from_row(row: &AnyRow) -> Result<Tenant> {
    Ok(Tenant {
        tenant_id: row.try_get(0).map_err(db)?,
        name: row.try_get(1).map_err(db)?,
        created_at: Timestamp(row.try_get(2).map_err(db)?),
    })
}

#[async_trait]
impl AccessStore for SqlStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO tenant_accounts (tenant_id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(&tenant.tenant_id)
        .bind(&tenant.name)
        .bind(tenant.created_at.as_micros())
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        if inserted == 0 {
            return Err(ConsentError::AlreadyExists(format!(
                "tenant `{}` already exists",
                tenant.tenant_id
            )));
        }
        Ok(())
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query(
            "SELECT tenant_id, name, created_at FROM tenant_accounts WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query(
            "SELECT tenant_id, name, created_at FROM tenant_accounts ORDER BY tenant_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(tenant_from_row).collect()
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        if self.get_tenant(&key.tenant_id).await?.is_none() {
            return Err(ConsentError::not_found("tenant", key.tenant_id.clone()));
        }
        sqlx::query(&format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&key.key_id)
        .bind(&key.tenant_id)
        .bind(&key.name)
        .bind(scopes_to_text(&key.scopes))
        .bind(key.secret_sha256.to_vec())
        .bind(key.created_at.as_micros())
        .bind(key.expires_at.map(Timestamp::as_micros))
        .bind(key.revoked_at.map(Timestamp::as_micros))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"
        ))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_api_key(&self, tenant_id: &str, key_id: &str, at: Timestamp) -> Result<ApiKey> {
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND key_id = $2 AND revoked_at IS NULL",
        )
        .bind(tenant_id)
        .bind(key_id)
        .bind(at.as_micros())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND key_id = $2"
        ))
        .bind(tenant_id)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        match row {
            Some(row) => key_from_row(&row),
            None => Err(ConsentError::not_found("api key", key_id)),
        }
    }
}
