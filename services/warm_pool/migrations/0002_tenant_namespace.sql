-- Where the tenant's browsers run on Kubernetes (from tenant.provisioned).
ALTER TABLE tenants ADD COLUMN namespace text;
