"""gate runs: the gates run on the worker, queued by the API

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 22:10:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('gaterun',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('finished_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('worker_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('stage', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('report_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('gaterun', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gaterun_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_gaterun_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_gaterun_version_id'), ['version_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('gaterun', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gaterun_version_id'))
        batch_op.drop_index(batch_op.f('ix_gaterun_status'))
        batch_op.drop_index(batch_op.f('ix_gaterun_created_at'))
    op.drop_table('gaterun')
